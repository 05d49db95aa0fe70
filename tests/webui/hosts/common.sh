# Shared helpers for the per-fork harnesses (sourced by <host>/setup.sh, start.sh, check.sh).
# Everything generated goes under $FORK_HARNESS/<host> (default $HOME/.cache/pg-fork-harness),
# never into this checkout.  The fork's source is exported from a local bare git mirror (the
# search tool's `fetch` lays them out as $MIRROR_ROOT/<owner>+<name>/repo) at a pinned commit.
set -euo pipefail

HOSTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
FORK_HARNESS=$(realpath -m "${FORK_HARNESS:-${HOME:?set FORK_HARNESS}/.cache/pg-fork-harness}")
MIRROR_ROOT=${MIRROR_ROOT:-/work/.mirror}
# The A1111 harness (../shared/webui-harness): we reuse its exporter and its random models, HF cache.
A1111_HARNESS_DIR=${A1111_HARNESS_DIR:-$(realpath -m "$HOSTS_DIR/../../../../shared/webui-harness")}
A1111_HARNESS=${HARNESS:-$HOME/.cache/pg-webui-harness}
PYTHON=${PYTHON:-python3}

say() { echo "[$HOST_NAME] $*" >&2; }
fail() { echo "[$HOST_NAME] ERROR: $*" >&2; exit 2; }

host_paths() {  # sets ROOT WEBUI VENV PY for $HOST_NAME
  ROOT=$FORK_HARNESS/$HOST_NAME
  WEBUI=$ROOT/webui
  VENV=$ROOT/venv
  PY=$VENV/bin/python
}

mirror_of() {  # owner/name -> bare git dir (or empty)
  local d
  for d in "$MIRROR_ROOT/${1/\//+}/repo" "$MIRROR_ROOT/${1/\//+}"; do
    if [[ -d $d ]] && git --git-dir="$d" rev-parse -q --git-dir >/dev/null 2>&1; then echo "$d"; return; fi
  done
}

# export_tree OWNER/NAME REF DEST [SUBDIR] : tree of REF (commit or branch) into DEST, once (marker
# file); with SUBDIR only that folder of the tree (a fork redistributed inside another repository)
export_tree() {
  local repo=$1 ref=$2 dest=$3 sub=${4:-} git commit
  if [[ -f $dest/.pg_export ]]; then say "$repo already exported ($(cat "$dest/.pg_export"))"; return; fi
  git=$(mirror_of "$repo")
  [[ -n $git ]] || fail "no mirror of $repo under MIRROR_ROOT=$MIRROR_ROOT: fetch github:$repo first"
  commit=$(git --git-dir="$git" rev-parse -q --verify "$ref^{commit}" 2>/dev/null) \
    || fail "$repo: '$ref' is not in the mirror $git (refs there: $(git --git-dir="$git" for-each-ref --format='%(refname:short)' refs/heads | tr '\n' ' '))"
  rm -rf "$dest"; mkdir -p "$dest"
  say "exporting $repo @ $commit${sub:+:$sub} -> $dest"
  # the snapshots lack blobs >= 4 MiB: the A1111 harness's exporter skips them and lists them
  "$PYTHON" "$A1111_HARNESS_DIR/tools/git_export.py" "$git" "$commit${sub:+:$sub}" "$dest" | tail -n 5 >&2
  echo "$repo $commit${sub:+:$sub}" > "$dest/.pg_export"
}

# overlay_tree DIR : point WEBUI at a hard-linked copy of the exported tree ($ROOT/webui-overlay, remade each
# start) with the harness's own files from DIR laid over its backend/huggingface/ (the model config files Neo
# reads, e.g. a text encoder with fewer layers: tests/webui/harness_models_dit.py). The harness writes nothing
# into the exported tree: each overlaid file replaces a link in the copy, not the file it links to (a file the
# host itself rewrote in place would be shared with the tree, as hard links are).
overlay_tree() {
  local src over=$ROOT/webui-overlay f
  src=$(realpath "$1") || fail "HF_OVERLAY: no directory $1"
  [[ -d $src ]] || fail "HF_OVERLAY: no directory $1"
  rm -rf "$over"
  cp -al "$WEBUI" "$over" || fail "could not copy $WEBUI to $over"
  rm -rf "$over/models" && ln -s "$WEBUI/models" "$over/models"   # models added later are seen too
  while IFS= read -r -d '' f; do
    f=${f#"$src"/}
    rm -f "$over/backend/huggingface/$f"
    mkdir -p "$(dirname "$over/backend/huggingface/$f")"
    cp "$src/$f" "$over/backend/huggingface/$f"
    say "overlay: backend/huggingface/$f (the harness's own copy)"
  done < <(find "$src" -type f -print0)
  WEBUI=$over
}

# link the random checkpoints (SD 1.5; SDXL where tests/webui/harness_models_families.py made them) and the LoRAs
# made by the A1111 harness (no new models)
link_models() {
  local src=$A1111_HARNESS/webui/models f
  [[ -f $src/Stable-diffusion/rand_sd15.safetensors ]] || fail "no A1111 harness models in $src: run ../shared/webui-harness/setup.sh first"
  mkdir -p "$WEBUI/models/Stable-diffusion" "$WEBUI/models/Lora"
  for f in rand_sd15.safetensors rand_sd15_dreambooth.safetensors rand_sdxl.safetensors rand_sdxl_dreambooth.safetensors; do
    [[ -f $src/Stable-diffusion/$f ]] && ln -sfn "$src/Stable-diffusion/$f" "$WEBUI/models/Stable-diffusion/$f"
  done
  for f in "$src"/Lora/*.safetensors; do ln -sfn "$f" "$WEBUI/models/Lora/$(basename "$f")"; done
  # the live preview's VAE approximation: without it the first txt2img tries to download it (HTTP 500 offline)
  mkdir -p "$WEBUI/models/VAE-approx"
  for f in "$src"/VAE-approx/*.pt; do [[ -f $f ]] && ln -sfn "$f" "$WEBUI/models/VAE-approx/$(basename "$f")"; done
  say "linked models: $(ls "$WEBUI/models/Stable-diffusion" | tr '\n' ' ')/ Lora: $(ls "$WEBUI/models/Lora" | tr '\n' ' ')"
}

pip_quiet() { "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# make_venv REQS_FILE [FIRST_FILE] : venv with the disk's torch pair first (never resolved freely), then
# FIRST_FILE (what the fork's launcher installs on its own before its requirements, e.g. gradio), then
# REQS, each under a constraints file that pins torch.
make_venv() {
  local reqs=$1 first=${2:-} cons=$ROOT/constraints.txt stamp=$VENV/.pg_reqs want t0
  printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$cons"
  want=$(cat "$reqs" ${first:+"$first"} "$cons" | sha256sum | cut -d' ' -f1)
  [[ -x $PY ]] || { say "venv: $PYTHON -m venv $VENV"; "$PYTHON" -m venv "$VENV"; }
  if [[ $(cat "$stamp" 2>/dev/null) == "$want" ]]; then say "venv up to date"; return; fi
  t0=$(date +%s)
  pip_quiet install -q torch==2.14.1 torchvision==0.29.1
  if [[ -n $first ]]; then say "pip install -r $first -c $cons"; pip_quiet install -q -r "$first" -c "$cons"; fi
  say "pip install -r $reqs -c $cons"
  pip_quiet install -q -r "$reqs" -c "$cons"
  echo "$want" > "$stamp"
  say "venv done in $(( $(date +%s) - t0 ))s, $(du -sh "$VENV" | cut -f1)"
}

# relaxed copy of the fork's requirements_versions.txt: SED_EXPR edits it, EXTRA lines are appended
write_reqs() {  # src dest sed-expr extra...
  local src=$1 dest=$2 expr=$3; shift 3
  # (the fork's file may lack a final newline: start the extras on a line of their own)
  { sed -e "$expr" "$src"; echo; printf '%s\n' "$@"; } > "$dest"
}
