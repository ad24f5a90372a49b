#!/bin/bash
# More held-out runs, each process writing its own JSON (NAME): two processes that write one
# file keep only the last writer's runs. usage: heldout_more.sh NAME WORKLOAD "SEEDS" ARM...
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src:$PWD/tests:$PWD/examples OMP_NUM_THREADS=1
name=$1; w=$2; seeds=$3; shift 3
arms=""; for a in "$@"; do arms="$arms --arm $a"; done
from=""; for f in benchmarks/efficiency/runs/heldout-$w*.json; do from="$from --from $f"; done
nice -n 10 ${PY:-python} benchmarks/search_efficiency.py --workload $w --seeds $seeds \
  --out benchmarks/efficiency/runs --name $name --skip-done $from $arms > /dev/null
