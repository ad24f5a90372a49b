#!/bin/bash
# The held-out workloads (issue 23), in parts that resume (--skip-done): one JSON per workload
# and phase, benchmarks/efficiency/runs/heldout-<w>-<phase>.json (two processes writing one file
# would keep only the last writer's runs). usage: heldout.sh PHASE WORKLOAD...
# PHASE baselines: the Optuna arms; trees: the tree arms; pbt: Ray Tune's PBT (PY=the python
# of a virtual environment with `pip install -e .[bench]`). Then merge them all:
#   python benchmarks/search_efficiency.py $(for f in benchmarks/efficiency/runs/heldout-*.json;
#     do echo --from $f; done) --out benchmarks/efficiency/runs --name heldout
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src:$PWD/tests:$PWD/examples OMP_NUM_THREADS=1
PY=${PY:-python}
phase=$1; shift
case $phase in
  baselines) ARMS="--arm tpe-median --arm tpe-sha --arm tpe-hyperband";;
  trees) ARMS="--arm tree --arm tree-half --arm tree-sh";;
  pbt) ARMS="--arm ray-pbt";;
esac
for w in "$@"; do
  F=""; for f in benchmarks/efficiency/runs/heldout-$w-*.json; do [ -f $f ] && F="$F --from $f"; done
  nice -n 10 $PY benchmarks/search_efficiency.py --workload $w --seeds 0 1 2 3 4 \
    --out benchmarks/efficiency/runs --name heldout-$w-$phase --skip-done $F $ARMS > /dev/null
done
