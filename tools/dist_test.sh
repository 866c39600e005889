#!/usr/bin/env bash
# Distributed testing with torchrun (tools/dist_launch.sh runs tools/test.py).
# Usage: tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py arguments]
# Several machines: NNODES, NODE_RANK, MASTER_ADDR and PORT in the environment of each.
set -euo pipefail
if [ "$#" -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py arguments]" >&2
    exit 2
fi
exec bash "$(dirname "$0")/dist_launch.sh" test.py "$3" "$1" "$2" "${@:4}"
