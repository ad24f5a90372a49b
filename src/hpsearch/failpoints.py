"""Named points on hpsearch's own paths where a fault test kills the process (SIGKILL).

A point is passed between two steps that leave different states behind, where no file or row
tells an outside watcher that the process is there (between asking Optuna for a trial and
sampling it, say): `hpsearch.testing.faults.kill_at_points` starts a run with
`HPSEARCH_FAILPOINTS="node.asked=5"`, and the run kills itself the 5th time it passes
`node.asked`. Each process counts its own passes. Unset (as in every real run), `passed` is one
dictionary lookup.

The points (the fork tree's node start, in order): `node.enqueued` (the node's trial is enqueued
with its place in the tree), `node.asked` (asked: RUNNING, no params yet), `node.sampled` (its
params sampled, no attempt registered), `trial.starting` (the attempt registered and its start
restored and forked, not yet recorded on the trial). Garbage collection: `gc.marked` (a
checkpoint's row says `deleting`, its files are whole) and `gc.files_deleted` (its files are
gone, its row still says `deleting`).
"""

from __future__ import annotations

import os
import signal

ENV = "HPSEARCH_FAILPOINTS"
POINTS = (
    "node.enqueued",
    "node.asked",
    "node.sampled",
    "trial.starting",
    "gc.marked",
    "gc.files_deleted",
)
NODE_START = POINTS[:4]  # a tree node's start, in order (the kill tests of tests/test_tree_faults)

_passes: dict[str, int] = {}
_parsed: tuple[str, dict[str, int]] = ("", {})


def _spec() -> dict[str, int]:
    global _parsed
    raw = os.environ.get(ENV, "")
    if raw != _parsed[0]:
        spec: dict[str, int] = {}
        for item in filter(None, (x.strip() for x in raw.split(","))):
            name, _, n = item.partition("=")
            if name not in POINTS or not n.isdigit() or int(n) < 1:
                raise ValueError(f"{ENV}: {item!r} is not POINT=N with POINT in {POINTS}")
            spec[name] = int(n)
        _parsed = (raw, spec)
    return _parsed[1]


def passed(name: str) -> None:
    """This process passes point `name`; killed here if the environment says so."""
    spec = _spec()
    if name not in spec:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == spec[name]:
        os.kill(os.getpid(), signal.SIGKILL)
