#!/bin/bash
# The held-out workloads (issue 23), in parts that resume (--skip-done): one JSON per workload
# in benchmarks/efficiency/runs/heldout-<w>.json. usage: heldout.sh PHASE WORKLOAD...
# PHASE baselines: the Optuna arms; trees: the tree arms; pbt: Ray Tune's PBT (bench venv)
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
  J=benchmarks/efficiency/runs/heldout-$w.json
  F=""; [ -f $J ] && F="--from $J"
  nice -n 10 $PY benchmarks/search_efficiency.py --workload $w --seeds 0 1 2 3 4 \
    --out benchmarks/efficiency/runs --name heldout-$w --skip-done $F $ARMS > /dev/null
done
