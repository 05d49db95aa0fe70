#!/usr/bin/env bash
# Offline CPU harness for Forge Neo (gradio 4.40).   MIRROR_ROOT=/work/.mirror bash tests/webui/hosts/forge_neo/setup.sh
# Where the source comes from: the search tool's snapshot of Neo's own repository
# (Haoming02/sd-webui-forge-classic) holds only the branches `classic` and `improved-presets`, not `neo`
# (checked 2026-12-01 and 2026-12-02). The one full Neo tree the tool can bring is a redistribution:
# exo101/sd-webui-forge-neo-v3 keeps Neo under `webui/` (`modules_forge/forge_version.py`: version
# "neo", release "2.26"). We pin its commit de2193d (2026-08-09), the first that tracks
# `backend/huggingface/` (the model configs Neo loads checkpoints with); its later commits edit
# processing.py, ui.py and main_entry.py for that bundle's own features, so they are not used.
# The bundle's third-party extensions (`webui/extensions/`) are removed after the export.
# Override with NEO_REPO / NEO_REF / NEO_SUBDIR (e.g. NEO_REPO=Haoming02/sd-webui-forge-classic
# NEO_REF=neo NEO_SUBDIR= once a snapshot has the branch). Writes only under $FORK_HARNESS/forge_neo.
HOST_NAME=forge_neo
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
host_paths
REPO=${NEO_REPO:-exo101/sd-webui-forge-neo-v3}
REF=${NEO_REF:-de2193d}
SUBDIR=${NEO_SUBDIR-webui}
mkdir -p "$ROOT/logs"
t_all=$(date +%s)

export_tree "$REPO" "$REF" "$WEBUI" "$SUBDIR"
[[ -f $WEBUI/modules_forge/forge_version.py ]] || fail "no modules_forge/forge_version.py in the exported tree: not a Neo checkout?"
grep -q '"neo"' "$WEBUI/modules_forge/forge_version.py" || fail "the exported tree is not Neo: $(cat "$WEBUI/modules_forge/forge_version.py")"
find "$WEBUI/extensions" -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null || true

# Chroma's T5 tokenizer: the redistribution's .gitignore (line 2, `**/tokenizer/tokenizer.json`) keeps
# `backend/huggingface/Chroma/tokenizer/tokenizer.json` out of the tree, and nothing writes it back at start, so
# this tree cannot load any Chroma checkpoint (docs/dit-families.md §5.5). The tokenizer is T5-XXL's: Chroma's
# tokenizer_config.json and special_tokens_map.json are byte-identical to FLUX.1-dev's tokenizer_2, whose
# tokenizer.json the tree does carry. Copy that one data file across (no source file is touched).
restore_chroma_tokenizer() {
  local src=$WEBUI/backend/huggingface/black-forest-labs/FLUX.1-dev/tokenizer_2 dst=$WEBUI/backend/huggingface/Chroma/tokenizer
  [[ -d $dst && ! -f $dst/tokenizer.json && -f $src/tokenizer.json ]] || return 0
  cmp -s "$src/tokenizer_config.json" "$dst/tokenizer_config.json" && cmp -s "$src/special_tokens_map.json" "$dst/special_tokens_map.json" \
    || { say "Chroma tokenizer left as is: its config differs from FLUX.1-dev/tokenizer_2"; return 0; }
  cp "$src/tokenizer.json" "$dst/tokenizer.json" && say "Chroma: T5 tokenizer.json restored from FLUX.1-dev/tokenizer_2"
}
restore_chroma_tokenizer

# As the launcher does (modules/launch_utils.py prepare_environment): gradio 4.40.0 + gradio_rangeslider
# 0.0.8 first, in a pip run of their own, then requirements.txt (whose Pillow 12 is newer than gradio
# 4.40 declares: pip warns and the launcher goes on, so do we). requirements.txt relaxed: the disk's
# torch pair instead of the launcher's CUDA wheel (constraints), setuptools new enough for torch 2.14.1.
printf '%s\n' "gradio==4.40.0" "gradio_rangeslider==0.0.8" > "$ROOT/requirements-first.txt"
write_reqs "$WEBUI/requirements.txt" "$ROOT/requirements.txt" \
  '/^https\?:\/\//d; /^git+/d; s/^setuptools==.*/setuptools==77.0.3/; /^torch\(vision\)\?\([=<>~ ]\|$\)/d' \
  "requests"
make_venv "$ROOT/requirements.txt" "$ROOT/requirements-first.txt"
link_models
say "setup done in $(( $(date +%s) - t_all ))s; disk: $(du -sh "$ROOT" | cut -f1) (venv $(du -sh "$VENV" | cut -f1))"
