#!/usr/bin/env bash
# bash tests/webui/hosts/probe_dit_layers.sh : PG's DiT layer corrections on Forge Neo's own DiTs and loader (no server, no model)
PROBE=probe_dit_layers.py exec bash "$(dirname "${BASH_SOURCE[0]}")/probe_adapter.sh" forge_neo
