#!/usr/bin/env bash
# Start forge_neo (set up by setup.sh) on CPU at 127.0.0.1:${PORT:-7870} with PG linked; see ../start_common.sh.
#   bash tests/webui/hosts/forge_neo/start.sh [EXTENSION_DIR ...]
HOST_NAME=forge_neo
HOST_ARGS=(--always-cpu)
source "$(dirname "${BASH_SOURCE[0]}")/../start_common.sh"
