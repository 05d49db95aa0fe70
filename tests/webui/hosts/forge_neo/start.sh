#!/usr/bin/env bash
# Start Forge Neo (set up by setup.sh) on CPU at 127.0.0.1:${PORT:-7873} with PG linked; see ../start_common.sh.
#   PORT=7873 bash tests/webui/hosts/forge_neo/start.sh [EXTENSION_DIR ...]
HOST_NAME=forge_neo
PORT=${PORT:-7873}
WAIT_MODEL=${WAIT_MODEL:-0}  # Neo loads the checkpoint at the first job, as Forge does
# Neo's own flags (backend/args.py): --cpu for everything on the CPU, fp32 weights and VAE.
HOST_ARGS=(--cpu --force-fp32 --fp32-unet --fp32-vae --fp32-text-enc --disable-gpu-warning)

# Neo has no --ckpt / --models-dir / --no-download-sd-model / --do-not-download-clip (and refuses unknown
# flags): models come from --model-ref, the checkpoint from the settings file's sd_model_checkpoint.
host_model_args() {
  local settings=$DATA_DIR/config.json
  mkdir -p "$DATA_DIR"
  # (a settings file without Neo's VERSION_UID makes the launcher wait for Enter: modules/launch_utils.py
  # verify_version; the value is read from that file, as a fresh install would write it)
  # UNET_DTYPE: Neo's "Diffusion in Low Bits" (e.g. "Automatic (fp16 LoRA)" = LoRAs patched on the fly, or
  # "float8-e4m3fn"); read only when the model loading parameters are refreshed at start (main_entry.py:127-142).
  # MODULES: the "VAE / Text Encoder" files a DiT checkpoint needs (comma-separated names under models/VAE or
  # models/text_encoder; tests/webui/harness_models_dit.py). None by default, so that an SD/SDXL run after a
  # DiT run in the same data dir does not inherit them (Neo keeps the list in its settings, main_entry.py:129).
  "$PY" - "$settings" "${CKPT:-rand_sd15.safetensors}" "$WEBUI/modules/launch_utils.py" "$WEBUI/models" "${MODULES:-}" \
      "${UNET_DTYPE:-Automatic}" <<'PY' || fail "could not write $settings"
import json, os, re, sys
path, ckpt, launch_utils, models, modules, unet_dtype = sys.argv[1:7]
data = json.load(open(path)) if os.path.exists(path) else {}
data["sd_model_checkpoint"] = ckpt
data["forge_unet_storage_dtype"] = unet_dtype
found = []
for name in filter(None, modules.split(",")):
    hits = [os.path.join(models, d, name) for d in ("VAE", "text_encoder") if os.path.isfile(os.path.join(models, d, name))]
    if not hits:
        sys.exit(f"MODULES: {name} is in neither {models}/VAE nor {models}/text_encoder")
    found.append(os.path.abspath(hits[0]))
data["forge_additional_modules"] = sorted(found)
uid = re.search(r'^VERSION_UID\b[^=]*=\s*"([^"]*)"', open(launch_utils).read(), re.M)
if uid and "VERSION_UID" not in data:
    data["VERSION_UID"] = uid.group(1)
json.dump(data, open(path, "w"), indent=1)
PY
  # gradio 4 serves `file=` paths only under allowed_paths, which Neo sets to its data path (cmd_args.py:44,
  # webui.py:118). A plain install's data path is the tree itself; with --data-dir elsewhere the tree's own
  # script.js (and with it every extension's UI script) would be refused: allow the tree, as a plain install does.
  model_args=(--model-ref "$WEBUI/models" --gradio-allowed-path "$WEBUI")
}
source "$(dirname "${BASH_SOURCE[0]}")/../start_common.sh"
