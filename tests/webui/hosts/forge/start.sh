#!/usr/bin/env bash
# Start forge (set up by setup.sh) on CPU at 127.0.0.1:${PORT:-7870} with PG linked; see ../start_common.sh.
#   bash tests/webui/hosts/forge/start.sh [EXTENSION_DIR ...]
HOST_NAME=forge
WAIT_MODEL=${WAIT_MODEL:-0}  # Forge loads the checkpoint at the first job: no "Model loaded" line to wait for
HOST_ARGS=(--always-cpu --all-in-fp32 --use-cpu all --no-half --no-half-vae --precision full)
source "$(dirname "${BASH_SOURCE[0]}")/../start_common.sh"
