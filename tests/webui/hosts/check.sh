#!/usr/bin/env bash
# bash tests/webui/hosts/check.sh <host> : import check in that fork's venv (no server, no model).
HOST_NAME=${1:?host: forge_neo, reforge or forge}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
host_paths
[[ -x $PY ]] || fail "no venv: run $HOST_NAME/setup.sh"
export HF_HOME=$A1111_HARNESS/hf HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
# config.json etc. of the check land in check-data, not in webui/; no bytecode in the checkout
export CHECK_DATA_DIR=$ROOT/check-data OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
# PG_EXT_DIR: also import PG's entry script from this checkout (set PG_EXT_DIR= to skip)
export PG_EXT_DIR=${PG_EXT_DIR-$(realpath "$HOSTS_DIR/../../..")}
cd "$WEBUI" && exec "$PY" -W ignore "$HOSTS_DIR/check_imports.py" "$HOST_NAME"
