#!/usr/bin/env bash
# Offline CPU harness for Forge Neo (Haoming02/sd-webui-forge-classic, branch `neo`, gradio 4).
#   MIRROR_ROOT=/work/.mirror bash tests/webui/hosts/forge_neo/setup.sh
# NEO_REF picks the commit (default: the mirror's `neo` branch).  On 2026-12-01 the stored snapshot
# of this repository holds only the branches `classic` and `improved-presets` (no `neo`), so this
# stops at the export with the refs it found; see ../README.md.  Writes only under $FORK_HARNESS/forge_neo.
HOST_NAME=forge_neo
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
host_paths
REF=${NEO_REF:-neo}
mkdir -p "$ROOT/logs"
t_all=$(date +%s)

export_tree Haoming02/sd-webui-forge-classic "$REF" "$WEBUI"
[[ -f $WEBUI/requirements.txt ]] || fail "no requirements.txt in the exported tree: not a Neo checkout?"
# Neo's launcher pins its own torch; we keep the disk's pair (constraints) and install the rest of
# its requirements from PyPI.  Lines that point at URLs cannot be installed offline: dropped, listed.
grep -nE '^(https?://|git\+)' "$WEBUI/requirements.txt" >&2 && say "dropping the URL requirements above" || true
write_reqs "$WEBUI/requirements.txt" "$ROOT/requirements.txt" \
  '/^https\?:\/\//d; /^git+/d; s/^setuptools==.*/setuptools==77.0.3/; /^torch\(vision\)\?\([=<>~ ]\|$\)/d' \
  "clip-anytorch==2.6.0" "requests"
make_venv "$ROOT/requirements.txt"
link_models
say "setup done in $(( $(date +%s) - t_all ))s; disk: $(du -sh "$ROOT" | cut -f1) (venv $(du -sh "$VENV" | cut -f1))"
