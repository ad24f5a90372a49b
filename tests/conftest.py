"""Shared fixtures: the example tasks are importable from tests."""

from __future__ import annotations

import os
import sys

# One intra-op thread in every test process and in the processes tests start (they inherit the
# variable): the suite runs two processes on two cores, and torch's default of one thread per
# core then makes four threads contend for two (the quickstart took 10x longer that way on a
# loaded machine). Tests that compare runs bit for bit run both sides in the same setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)

from pgserver import (  # noqa: E402, F401  (fixtures)
    pgbouncer,
    postgres_db,
    postgres_server,
    postgres_url,
)
