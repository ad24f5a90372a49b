"""Shared fixtures: the example tasks are importable from tests."""

from __future__ import annotations

import os
import sys

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
