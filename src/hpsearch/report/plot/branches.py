"""One branch of the plot as geometry: its segments from its fork to its end, its curve.

Pure functions of the trials (no matplotlib), used by `data` (one row per branch, forking from
the trunk) and `forktree` (rows of a fork tree, forking from the parent's row).
"""

from __future__ import annotations

import itertools
import math

from hpsearch.report.plot.model import Branch, Marker, Point, Segment
from hpsearch.report.views import TrialView


def end_of(t: TrialView) -> float:
    """Where a trial stopped: its end, else its last report, else its fork point."""
    if t.end_progress is not None:
        return max(t.end_progress, t.fork_progress)
    if t.intermediate:
        return max(t.intermediate[-1][0], t.fork_progress)
    return t.fork_progress


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def color_value(t: TrialView) -> float | None:
    """The objective the branch's colour shows; a pruned trial without one shows its last report."""
    v = _finite(t.value)
    if v is None and t.state == "PRUNED" and t.intermediate:
        v = _finite(t.intermediate[-1][1])
    return v


_MARKERS: dict[str, Marker] = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
}
GROUP = {"COMPLETE": 0, "RUNNING": 1, "PRUNED": 2, "FAIL": 3}


def row_key(chain: list[TrialView], maximize: bool) -> tuple[float, ...]:
    last = chain[-1]
    group = GROUP.get(last.state, 4)
    v = color_value(last)
    better_first = math.inf if v is None else (-v if maximize else v)
    if last.state in ("PRUNED", "RUNNING"):
        return (group, -end_of(last), better_first, last.number)
    if last.state == "COMPLETE":
        return (group, better_first, 0.0, last.number)
    return (group, 0.0, 0.0, last.number)


def make_branch(
    chain: list[TrialView],
    y: float,
    scale: float,
    connector: float,
    best_number: int | None,
    *,
    y_from: float = 0.0,
) -> Branch:
    """The branch of `chain` on row `y`, climbing from `y_from` (the trunk, or in a fork tree
    its parent's row; its own for a root) at its fork point."""
    first, last = chain[0], chain[-1]
    x0 = first.fork_progress * scale
    x1 = end_of(last) * scale
    xc = min(x0 + connector, x1)
    resumes: list[float] = []
    for t in chain[1:]:  # clamped and non-decreasing, whatever the data says
        resumes.append(min(max(t.fork_progress * scale, resumes[-1] if resumes else x0), x1))
    cuts = (x0, *resumes, x1)
    segments: list[Segment] = []
    for k, t in enumerate(chain):
        segments.extend(
            _piece(
                (x0, xc, x1), (y_from, y), cuts[k], cuts[k + 1], t.number, last=k == len(chain) - 1
            )
        )
    state = last.state
    attempts = tuple(t.number for t in chain[:-1])
    label = f"#{last.number}"
    if attempts:
        label += " (resumes " + ", ".join(f"#{n}" for n in attempts) + ")"
    return Branch(
        number=last.number,
        state=state,
        value=last.value,
        x0=x0,
        x1=x1,
        y=y,
        color_value=color_value(last),
        faded=state in ("PRUNED", "FAIL"),
        marker=_MARKERS.get(state, "running"),
        is_best=best_number is not None and any(t.number == best_number for t in chain),
        label=label,
        attempts=attempts,
        resumes=tuple(resumes),
        segments=tuple(segments),
        params=dict(last.params),
    )


def _piece(
    xs: tuple[float, float, float],
    ys: tuple[float, float],
    a: float,
    b: float,
    trial: int,
    *,
    last: bool,
) -> list[Segment]:
    """The part of the polyline (x0, y0) -> (xc, y) -> (x1, y) between x=a and x=b, for
    xs = (x0, xc, x1) and ys = (y0, y)."""
    x0, xc, _ = xs
    y0, y = ys
    if xc <= x0:  # a branch of zero length: a vertical connector, drawn for its last attempt
        return [Segment(x0, y0, x0, y, trial)] if last else []

    def at(x: float) -> Point:
        return (x, y0 + (y - y0) * (x - x0) / (xc - x0)) if x < xc else (x, y)

    points = [at(a)]
    if a < xc < b:
        points.append((xc, y))
    points.append(at(b))
    return [
        Segment(ax, ay, bx, by, trial)
        for (ax, ay), (bx, by) in itertools.pairwise(points)
        if (ax, ay) != (bx, by)
    ]
