#!/usr/bin/env bash
# Stop the reforge instance start.sh started:  bash tests/webui/hosts/reforge/stop.sh [PORT]
HOST_NAME=reforge
source "$(dirname "${BASH_SOURCE[0]}")/../stop_common.sh"
