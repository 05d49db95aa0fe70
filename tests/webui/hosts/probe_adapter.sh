#!/usr/bin/env bash
# bash tests/webui/hosts/probe_adapter.sh reforge|forge|forge_neo : PG's adapter on the fork's own code (no server, no model)
HOST_NAME=${1:?host: reforge, forge or forge_neo}  # PROBE=probe_loader.py runs that probe instead
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
host_paths
[[ -x $PY ]] || fail "no venv: run $HOST_NAME/setup.sh"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
export PG_EXT_DIR=${PG_EXT_DIR:-$(cd "$HOSTS_DIR/../../.." && pwd -P)}
cd "$WEBUI" && exec "$PY" -W ignore "$HOSTS_DIR/${PROBE:-probe_adapter.py}" "$HOST_NAME"
