#!/usr/bin/env bash
# Stop the forge instance start.sh started:  bash tests/webui/hosts/forge/stop.sh [PORT]
HOST_NAME=forge
source "$(dirname "${BASH_SOURCE[0]}")/../stop_common.sh"
