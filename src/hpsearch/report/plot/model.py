"""The branch plot's data types: plain frozen dataclasses, no matplotlib.

`hpsearch.report.plot.data` computes them (with `branches` for one branch's geometry and
`forktree` for a fork tree's rows); `layout` and `draw` read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hpsearch.report.plot.colors import interpolate
from hpsearch.report.views import TrialStateName

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
    # a fork tree's node (None and False elsewhere): its generation, the trial it forked from
    # (whose row its connector leaves), whether children fork from its end (a survivor),
    # whether it is on the winner's path, and whether it finished its generation but was
    # ranked out at the rung (neither a survivor nor of the deepest generation)
    generation: int | None = None
    parent: int | None = None
    survivor: bool = False
    on_path: bool = False
    ranked_out: bool = False


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
class Level:
    """A generation of a fork tree: its nodes train from the rung boundary `x0` (0 for the
    roots) to `x1`, its rung, where the best `survivors` are forked into the next one."""

    generation: int
    x0: float
    x1: float
    nodes: int
    survivors: int
    pruned: int
    complete: int


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
    # a fork tree: its generations, the winner's path (trial numbers, root first), and rows
    # (fewer than branches: a node's first child continues on its row)
    tree: bool = False
    levels: tuple[Level, ...] = ()
    winner_path: tuple[int, ...] = ()
    n_rows: int = 0
    winner_curve: tuple[Point, ...] = ()  # the winner's lineage's curve, root to winner

    def color_position(self, value: float | None) -> float | None:
        """Where `value` sits on the colour map (0..1), or None for no value."""
        return interpolate(self.color_stops, value)

    def branch(self, number: int) -> Branch:
        """The branch that draws trial `number` (also when it is a failed, continued attempt)."""
        for b in self.branches:
            if b.number == number or number in b.attempts:
                return b
        raise KeyError(f"trial #{number} is not drawn (not_drawn={list(self.not_drawn)})")
