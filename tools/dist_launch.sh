#!/usr/bin/env bash
# torchrun launcher shared by dist_train.sh and dist_test.sh: one process per GPU (or per CPU
# slot without CUDA), each running tools/SCRIPT with --launcher pytorch.
# Usage: tools/dist_launch.sh SCRIPT NPROC [SCRIPT arguments]
# Several machines: NNODES, NODE_RANK, MASTER_ADDR and PORT in the environment of each.
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 SCRIPT NPROC [script arguments]" >&2
    exit 2
fi
SCRIPT=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(dirname "$0")/.."

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
python -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$ROOT/tools/$SCRIPT" \
    "${@:3}" \
    --launcher pytorch
