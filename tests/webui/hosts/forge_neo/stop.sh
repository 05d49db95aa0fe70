#!/usr/bin/env bash
# Stop the forge_neo instance start.sh started:  bash tests/webui/hosts/forge_neo/stop.sh [PORT]
HOST_NAME=forge_neo
source "$(dirname "${BASH_SOURCE[0]}")/../stop_common.sh"
