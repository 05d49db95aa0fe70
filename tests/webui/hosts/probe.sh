#!/usr/bin/env bash
# bash tests/webui/hosts/probe.sh <host> : contract probe with the fork's own code (no server, no model)
HOST_NAME=${1:?host: forge_neo, reforge or forge}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
host_paths
[[ -x $PY ]] || fail "no venv: run $HOST_NAME/setup.sh"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
cd "$WEBUI" && exec "$PY" -W ignore "$HOSTS_DIR/probe_contract.py" "$HOST_NAME"
