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
gone, its row still says `deleting`). A trial of several ranks (`trials.processes`):
`ranks.gathered` (rank 0 holds every rank's RNG for a checkpoint, nothing of it is written yet)
and `follower.step` (a follower rank has taken an optimizer step; its trial's rank 0 lives on).

`HPSEARCH_FAILPOINTS_ONCE=<path>` kills only the first process of all that reach the count
(it creates `<path>.<point>`): a point in follower ranks, which every trial starts anew, kills
one of them, not each.
"""

from __future__ import annotations

import os
import signal

ENV = "HPSEARCH_FAILPOINTS"
ONCE_ENV = "HPSEARCH_FAILPOINTS_ONCE"
NODE_START = ("node.enqueued", "node.asked", "node.sampled", "trial.starting")
RANKS = ("ranks.gathered", "follower.step")
POINTS = (*NODE_START, "gc.marked", "gc.files_deleted", *RANKS)

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
    if _passes[name] == spec[name] and _first(name):
        os.kill(os.getpid(), signal.SIGKILL)


def _first(name: str) -> bool:
    """Whether this process is the one to die here (with ONCE_ENV: the first to get here)."""
    once = os.environ.get(ONCE_ENV)
    if not once:
        return True
    try:
        os.close(os.open(f"{once}.{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
