#!/usr/bin/env bash
# bash tests/webui/hosts/probe_loader.sh forge_neo : PG's LoRA selection on the fork's own LoRA loader (no server, no model)
PROBE=probe_loader.py exec bash "$(dirname "${BASH_SOURCE[0]}")/probe_adapter.sh" "$@"
