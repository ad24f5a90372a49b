"""The branch plot's data (SPEC section 7): a pure function of a `StudyView`, no matplotlib.

`branch_plot_data` returns plain dataclasses with every coordinate (in data units: x is training
progress, y is the branch's row), colour value and marker the figure shows, so tests assert on
values instead of pixels; `hpsearch.report.plot.layout` turns them into the figure's axes, sizes,
colours and labels, and `hpsearch.report.plot.draw` draws them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from hpsearch.report.plot.chains import chain_points, group_chains
from hpsearch.report.plot.colors import color_range, color_stops, interpolate
from hpsearch.report.views import StudyView, TrialStateName, TrialView

if TYPE_CHECKING:
    from hpsearch.config import Direction

X_AXES = ("epochs", "samples")

# Fraction of the trials' x span (first fork to last end) a branch takes to climb from the trunk
# to its row: short enough that x still reads as progress, long enough that 200 connectors fan out.
CONNECTOR_FRACTION = 0.04

Marker = Literal["complete", "pruned", "failed", "running"]
Point = tuple[float, float]


@dataclass(frozen=True)
class Segment:
    """A straight piece of line, from (x0, y0) to (x1, y1).

    `trial` is the number of the trial that trained this stretch (None for the warm-up trunk):
    a branch that continues a crashed attempt is made of pieces of several trials.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    trial: int | None = None


@dataclass(frozen=True)
class Branch:
    """One drawn branch: a trial, together with the failed attempts it continues.

    `number`, `state` and `value` are the last attempt's; `attempts` lists the earlier, failed
    attempts (oldest first) that this trial continues after crashes: they are drawn as part of
    this branch, not as branches of their own. `x0` is the fork point of the first attempt,
    `x1` where the last one ended; `resumes` are the points where a continuation took over.
    `y` is the branch's row (the trunk is y=0, rows are -1, -2, ...); `segments` is the line as
    drawn: a short connector from the trunk at `x0` up to the row, then along the row to `x1`,
    split where the attempts hand over. `marker` is "complete", "pruned", "failed" or "running".
    `color_value` is the objective the colour shows (None: neutral colour).
    """

    number: int
    state: TrialStateName
    value: float | None
    x0: float
    x1: float
    y: float
    color_value: float | None
    faded: bool
    marker: Marker
    is_best: bool
    label: str
    color_position: float | None = None  # where `color_value` sits on the colour map, 0..1
    attempts: tuple[int, ...] = ()
    resumes: tuple[float, ...] = ()
    segments: tuple[Segment, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Curve:
    """The objective curve of one branch for the second panel: (x, objective) points.

    For a continuation chain the points of the failed attempts come first, up to where the
    continuation took over; a value the continuation shares with its attempt (it carries the
    attempt's reports) is drawn once. x strictly increases and ends at the branch's end.
    """

    number: int
    state: TrialStateName
    points: tuple[Point, ...]
    color_value: float | None
    faded: bool
    marker: Marker
    is_best: bool
    color_position: float | None = None


@dataclass(frozen=True)
class BranchPlotData:
    """Everything the branch plot shows, as plain values (see `branch_plot_data`).

    `trunk` is None in classic mode (no warm-up). `best_path` runs from the start of the trunk
    through the fork to the best trial's end (empty when no trial is COMPLETE). `not_drawn` lists
    trials with nothing to draw yet (WAITING).

    Colours: `color_stops` map an objective value to a position on `cmap` (piecewise linear
    between the stops, clipped at both ends; see `color_position`). The finished trials' range
    [`vmin`, `vmax`] is linear over the good part of the map; the values worse than all of them
    (pruned trials, measured earlier) share the last `BELOW_SHARE` of it by rank, so each still
    gets a colour of its own. `cmap` is reversed for "minimize" so the good end of the scale is
    always the same colour.
    """

    study: str
    metric: str
    direction: Direction
    x: str
    x_label: str
    classic: bool
    trunk: Segment | None
    branches: tuple[Branch, ...]
    best_number: int | None
    best_value: float | None
    best_path: tuple[Segment, ...]
    best_text: str | None
    curves: tuple[Curve, ...]
    warmup_curve: tuple[Point, ...]
    vmin: float
    vmax: float
    cmap: str
    counts: dict[str, int]
    n_trials: int
    not_drawn: tuple[int, ...] = ()
    color_stops: tuple[Point, ...] = ()
    n_below: int = 0  # trials worse than the finished range, coloured by rank

    def color_position(self, value: float | None) -> float | None:
        """Where `value` sits on the colour map (0..1), or None for no value."""
        return interpolate(self.color_stops, value)

    def branch(self, number: int) -> Branch:
        """The branch that draws trial `number` (also when it is a failed, continued attempt)."""
        for b in self.branches:
            if b.number == number or number in b.attempts:
                return b
        raise KeyError(f"trial #{number} is not drawn (not_drawn={list(self.not_drawn)})")


def branch_plot_data(view: StudyView, *, x: str = "epochs") -> BranchPlotData:
    """Compute the branch plot of `view`: pure, no matplotlib.

    `x` is "epochs" (training progress as stored) or "samples" (progress × samples_per_epoch).

    Rows: COMPLETE trials first, best on top (right under the trunk, so the winner's path is the
    shortest and easiest to follow), then RUNNING ones, then PRUNED ones ordered by how far they
    got (latest prune first), then trials that failed and were not continued. Grouping by state
    before sorting matters: a pruned trial's value was measured earlier in training and is not
    comparable with a finished one's; sorted by where they stopped, the pruned branches' end marks
    form a staircase that shows when the pruner acted. Sorting by trial number instead would
    scatter the colours and hide both.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}, but got x={x!r}")
    scale = float(view.samples_per_epoch) if x == "samples" else 1.0
    maximize = view.direction == "maximize"
    chains, not_drawn = group_chains(view.trials)
    best = view.best()
    best_number = best.number if best is not None else None
    branches, curves = _rows(chains, maximize, scale, best_number)

    trunk = None
    if not view.classic and view.warmup_progress > 0:
        trunk = Segment(0.0, 0.0, view.warmup_progress * scale, 0.0, None)
    best_path: tuple[Segment, ...] = ()
    best_text = None
    if best is not None:
        best_branch = next(b for b in branches if b.is_best)
        best_path = ((trunk,) if trunk is not None else ()) + best_branch.segments
        best_text = _best_text(view, best, best_branch)
    vmin, vmax = color_range([(b.state, b.color_value) for b in branches])
    stops, n_below = color_stops((b.color_value for b in branches), vmin, vmax, maximize)
    branches, curves = _place_colors(branches, curves, stops)
    counts: dict[str, int] = {}
    for t in view.trials:
        counts[t.state] = counts.get(t.state, 0) + 1

    return BranchPlotData(
        study=view.name,
        metric=view.metric,
        direction=view.direction,
        x=x,
        x_label="training progress (epochs)" if x == "epochs" else "training progress (samples)",
        classic=view.classic,
        trunk=trunk,
        branches=branches,
        best_number=best_number,
        best_value=best.value if best is not None else None,
        best_path=best_path,
        best_text=best_text,
        curves=curves,
        warmup_curve=tuple((p * scale, v) for p, v in view.warmup_curve),
        vmin=vmin,
        vmax=vmax,
        cmap="viridis" if maximize else "viridis_r",
        counts=counts,
        n_trials=len(view.trials),
        not_drawn=not_drawn,
        color_stops=stops,
        n_below=n_below,
    )


def _rows(
    chains: list[list[TrialView]], maximize: bool, scale: float, best_number: int | None
) -> tuple[tuple[Branch, ...], tuple[Curve, ...]]:
    """The branches in row order (row 1 right under the trunk), each with its objective curve."""
    ends = [_end(c[-1]) for c in chains]
    starts = [c[0].fork_progress for c in chains]
    span = (max(ends) - min(starts)) if chains else 0.0
    connector = CONNECTOR_FRACTION * span * scale
    order = sorted(range(len(chains)), key=lambda i: _row_key(chains[i], maximize))
    branches: list[Branch] = []
    curves: list[Curve] = []
    for row, i in enumerate(order, start=1):
        chain = chains[i]
        branch = _branch(chain, -float(row), scale, connector, best_number)
        branches.append(branch)
        curves.append(
            Curve(
                number=branch.number,
                state=branch.state,
                points=chain_points(chain, scale, branch.x1),
                color_value=branch.color_value,
                faded=branch.faded,
                marker=branch.marker,
                is_best=branch.is_best,
            )
        )
    return tuple(branches), tuple(curves)


def _place_colors(
    branches: tuple[Branch, ...], curves: tuple[Curve, ...], stops: tuple[Point, ...]
) -> tuple[tuple[Branch, ...], tuple[Curve, ...]]:
    """Each branch and curve with its colour's position on the map (see `color_stops`)."""
    return (
        tuple(replace(b, color_position=interpolate(stops, b.color_value)) for b in branches),
        tuple(replace(c, color_position=interpolate(stops, c.color_value)) for c in curves),
    )


def _end(t: TrialView) -> float:
    """Where a trial stopped: its end, else its last report, else its fork point."""
    if t.end_progress is not None:
        return max(t.end_progress, t.fork_progress)
    if t.intermediate:
        return max(t.intermediate[-1][0], t.fork_progress)
    return t.fork_progress


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _color_value(t: TrialView) -> float | None:
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
_GROUP = {"COMPLETE": 0, "RUNNING": 1, "PRUNED": 2, "FAIL": 3}


def _row_key(chain: list[TrialView], maximize: bool) -> tuple[float, ...]:
    last = chain[-1]
    group = _GROUP.get(last.state, 4)
    v = _color_value(last)
    better_first = math.inf if v is None else (-v if maximize else v)
    if last.state in ("PRUNED", "RUNNING"):
        return (group, -_end(last), better_first, last.number)
    if last.state == "COMPLETE":
        return (group, better_first, 0.0, last.number)
    return (group, 0.0, 0.0, last.number)


def _branch(
    chain: list[TrialView], y: float, scale: float, connector: float, best_number: int | None
) -> Branch:
    first, last = chain[0], chain[-1]
    x0 = first.fork_progress * scale
    x1 = _end(last) * scale
    xc = min(x0 + connector, x1)
    resumes: list[float] = []
    for t in chain[1:]:  # clamped and non-decreasing, whatever the data says
        resumes.append(min(max(t.fork_progress * scale, resumes[-1] if resumes else x0), x1))
    cuts = (x0, *resumes, x1)
    segments: list[Segment] = []
    for k, t in enumerate(chain):
        segments.extend(
            _piece(x0, xc, x1, y, cuts[k], cuts[k + 1], t.number, last=k == len(chain) - 1)
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
        color_value=_color_value(last),
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
    x0: float, xc: float, x1: float, y: float, a: float, b: float, trial: int, *, last: bool
) -> list[Segment]:
    """The part of the polyline (x0, 0) -> (xc, y) -> (x1, y) between x=a and x=b."""
    if xc <= x0:  # a branch of zero length: a vertical connector, drawn for its last attempt
        return [Segment(x0, 0.0, x0, y, trial)] if last else []

    def at(x: float) -> Point:
        return (x, y * (x - x0) / (xc - x0)) if x < xc else (x, y)

    points = [at(a)]
    if a < xc < b:
        points.append((xc, y))
    points.append(at(b))
    return [
        Segment(ax, ay, bx, by, trial)
        for (ax, ay), (bx, by) in itertools.pairwise(points)
        if (ax, ay) != (bx, by)
    ]


def format_param(value: Any) -> str:
    """A parameter value in 3 significant digits (ints, strings and bools as they are)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.3g}"


def _best_text(view: StudyView, best: TrialView, branch: Branch) -> str:
    params = ", ".join(f"{k}={format_param(v)}" for k, v in best.params.items())
    head = f"best: trial #{best.number}  {view.metric} = {best.value:.4g}"
    crashed = [n for n in branch.attempts if n != best.number]
    if crashed:
        head += f"  (resumed after crash of {', '.join(f'#{n}' for n in crashed)})"
    return head + (f"\n{params}" if params else "")
