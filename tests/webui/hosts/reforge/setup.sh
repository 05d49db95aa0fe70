#!/usr/bin/env bash
# Offline CPU harness for reForge (Panchovix/stable-diffusion-webui-reForge, branch main, gradio 3.41).
#   MIRROR_ROOT=/work/.mirror bash tests/webui/hosts/reforge/setup.sh
# Needs mirrors (search tool `fetch`): Panchovix/stable-diffusion-webui-reForge and the five the
# A1111 harness uses (assets, Stability-AI/stablediffusion, generative-models, k-diffusion, BLIP),
# and the A1111 harness's models ($HARNESS/webui/models).  Writes only under $FORK_HARNESS/reforge.
HOST_NAME=reforge
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
host_paths
REF=${REFORGE_REF:-3b56b268ad9158ee8b30900973b6ccda4ec22241}   # main, 2026-03-11 "Add missing R-ESRGAN"
mkdir -p "$ROOT/logs"
t_all=$(date +%s)

export_tree Panchovix/stable-diffusion-webui-reForge "$REF" "$WEBUI"
# what prepare_environment() would git-clone (modules/launch_utils.py pins); reForge points
# STABLE_DIFFUSION_REPO at a copy of Stability-AI/stablediffusion at f16630a9, a commit the
# Stability-AI mirror lacks: we use cf1d67a6 (the one A1111 pins) and say so.
R=$WEBUI/repositories
export_tree AUTOMATIC1111/stable-diffusion-webui-assets 6f7db241d2f8ba7457bac5ca9753331f0c266917 "$R/stable-diffusion-webui-assets"
export_tree Stability-AI/stablediffusion cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf "$R/stable-diffusion-stability-ai"
export_tree Stability-AI/generative-models 45c443b316737a4ab6e40413d7794a7f5657c19f "$R/generative-models"
export_tree crowsonkb/k-diffusion ab527a9a6d347f364e3d185ba6d714e22d80cb3c "$R/k-diffusion"
export_tree salesforce/BLIP 48211a1594f1321b00f14c9f7a5b4813144b2fb9 "$R/BLIP"

# requirements_versions.txt, relaxed: setuptools>=77.0.3 for torch 2.14.1; the pydantic wheel
# reForge downloads from a GitHub release -> pydantic 1.10.15 from PyPI; openai CLIP from PyPI
# (clip-anytorch) instead of the launcher's GitHub zip.
write_reqs "$WEBUI/requirements_versions.txt" "$ROOT/requirements.txt" \
  's/^setuptools==.*/setuptools==77.0.3/; s|^https://github.com/Panchovix/pydantic-fixreforge.*|pydantic==1.10.15|' \
  "clip-anytorch==2.6.0" "requests"
make_venv "$ROOT/requirements.txt"
link_models
say "setup done in $(( $(date +%s) - t_all ))s; disk: $(du -sh "$ROOT" | cut -f1) (venv $(du -sh "$VENV" | cut -f1))"
