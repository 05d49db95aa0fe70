#!/usr/bin/env bash
# bash tests/webui/hosts/check.sh <host> : import check in that fork's venv (no server, no model).
HOST_NAME=${1:?host: forge_neo, reforge or forge}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
host_paths
[[ -x $PY ]] || fail "no venv: run $HOST_NAME/setup.sh"
export HF_HOME=$A1111_HARNESS/hf HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
cd "$WEBUI" && exec "$PY" -W ignore "$HOSTS_DIR/check_imports.py" "$HOST_NAME"
