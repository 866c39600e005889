#!/usr/bin/env bash
# Distributed training with torchrun (tools/dist_launch.sh runs tools/train.py).
# Usage: tools/dist_train.sh CONFIG GPUS [tools/train.py arguments]
# Several machines: NNODES, NODE_RANK, MASTER_ADDR and PORT in the environment of each.
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [train.py arguments]" >&2
    exit 2
fi
exec bash "$(dirname "$0")/dist_launch.sh" train.py "$2" "$1" "${@:3}"
