#!/usr/bin/env bash
# Offline CPU harness for Forge (lllyasviel/stable-diffusion-webui-forge, branch main = "Forge 2",
# gradio 4.40).   MIRROR_ROOT=/work/.mirror bash tests/webui/hosts/forge/setup.sh
# Needs mirrors (search tool `fetch`): lllyasviel/stable-diffusion-webui-forge,
# lllyasviel/huggingface_guess, AUTOMATIC1111/stable-diffusion-webui-assets, salesforce/BLIP,
# and the A1111 harness's models.  Writes only under $FORK_HARNESS/forge.
HOST_NAME=forge
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
host_paths
REF=${FORGE_REF:-dfdcbab685e57677014f05a3309b48cc87383167}   # main, 2025-06-26 "Fix SD upscale Batch count (#2950)"
mkdir -p "$ROOT/logs"
t_all=$(date +%s)

export_tree lllyasviel/stable-diffusion-webui-forge "$REF" "$WEBUI"
# prepare_environment() clones these three (modules/launch_utils.py pins); Forge 2 no longer uses
# stablediffusion / generative-models / k-diffusion checkouts.
R=$WEBUI/repositories
export_tree AUTOMATIC1111/stable-diffusion-webui-assets 6f7db241d2f8ba7457bac5ca9753331f0c266917 "$R/stable-diffusion-webui-assets"
export_tree lllyasviel/huggingface_guess 84826248b49bb7ca754c73293299c4d4e23a548d "$R/huggingface_guess"
export_tree salesforce/BLIP 48211a1594f1321b00f14c9f7a5b4813144b2fb9 "$R/BLIP"

# requirements_versions.txt, relaxed: setuptools>=77.0.3 for torch 2.14.1; openai CLIP from PyPI
# (clip-anytorch) instead of the launcher's GitHub zip (open-clip-torch is pinned there already).
write_reqs "$WEBUI/requirements_versions.txt" "$ROOT/requirements.txt" \
  's/^setuptools==.*/setuptools==77.0.3/' "clip-anytorch==2.6.0" "requests"
make_venv "$ROOT/requirements.txt"
link_models
say "setup done in $(( $(date +%s) - t_all ))s; disk: $(du -sh "$ROOT" | cut -f1) (venv $(du -sh "$VENV" | cut -f1))"
