"""The branch plot's continuation chains: a trial with the failed attempts it continues.

Pure functions of the trials (no matplotlib), used by `hpsearch.report.plot.data`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hpsearch.report.views import TrialView

Point = tuple[float, float]


def group_chains(trials: Sequence[TrialView]) -> tuple[list[list[TrialView]], tuple[int, ...]]:
    """Group trials into continuation chains (first attempt ... last attempt).

    A trial whose `retry_of` names another drawn trial continues it. If two trials claim the same
    attempt, the lower-numbered one continues it and the other is drawn as a chain of its own, so
    every trial is drawn exactly once. WAITING trials have nothing to draw yet.
    """
    drawn = sorted((t for t in trials if t.state != "WAITING"), key=lambda t: t.number)
    not_drawn = tuple(sorted(t.number for t in trials if t.state == "WAITING"))
    by_number = {t.number: t for t in drawn}
    continued_by: dict[int, TrialView] = {}
    for t in drawn:
        parent = t.retry_of
        if parent is not None and parent in by_number and parent != t.number:
            continued_by.setdefault(parent, t)
    continuations = {t.number for t in continued_by.values()}
    chains: list[list[TrialView]] = []
    for t in drawn:
        if t.number in continuations:
            continue
        chain = [t]
        seen = {t.number}
        while chain[-1].number in continued_by:
            nxt = continued_by[chain[-1].number]
            if nxt.number in seen:  # a cycle in bad data: stop rather than loop forever
                break
            chain.append(nxt)
            seen.add(nxt.number)
        chains.append(chain)
    # Members of a cycle are reachable from no root: draw each on its own.
    placed = {t.number for c in chains for t in c}
    chains.extend([t] for t in drawn if t.number not in placed)
    return chains, not_drawn


def chain_points(chain: list[TrialView], scale: float, end: float) -> tuple[Point, ...]:
    """The chain's reports, each attempt's from its own start up to where the next took over,
    none past `end` (the branch's end) and each x once.

    A continuation carries the reports of the attempt it continues (and recomputes those the
    attempt made after its last checkpoint): taken from both, they were drawn twice, and the
    curve ran back and forth."""
    points: list[Point] = []
    limit = end + 1e-9 * max(abs(end), 1.0)
    for k, t in enumerate(chain):
        lo = t.fork_progress if k > 0 else -math.inf
        hi = chain[k + 1].fork_progress if k + 1 < len(chain) else math.inf
        for p, v in t.intermediate:
            x = p * scale
            if lo < p <= hi and x <= limit and (not points or x > points[-1][0]):
                points.append((x, v))
    return tuple(points)
