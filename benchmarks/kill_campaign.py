"""Renamed: benchmarks/fault_campaign.py. This name runs its kill fault only, as before:

python benchmarks/kill_campaign.py [--study studies/quickstart.yaml] [--kills 100] [--seed 0]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fault_campaign import main

if __name__ == "__main__":
    sys.exit(main(["--faults", "kill", *sys.argv[1:]]))
