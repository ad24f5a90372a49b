#!/bin/bash
# usage: tune.sh WORKLOAD... ; one JSON per workload in benchmarks/efficiency/runs/tuning-<w>.json
cd /work/wt-budget
export PYTHONPATH=$PWD/src:$PWD/tests:$PWD/examples OMP_NUM_THREADS=1
for w in "$@"; do
  J=benchmarks/efficiency/runs/tuning-$w.json
  F=""; [ -f $J ] && F="--from $J"
  S="--workload $w --seeds 100 101 102 --out benchmarks/efficiency/runs --name tuning-$w --skip-done"
  nice -n 10 python benchmarks/search_efficiency.py $S $F --arm tpe-median --arm tree --arm tree-sh > /dev/null
  for v in "--tree-pruner none" "--tree-children 4" "--tree-probe 0.05" "--tree-keep 0.5"; do
    nice -n 10 python benchmarks/search_efficiency.py $S --from $J --arm tree $v > /dev/null
  done
done
