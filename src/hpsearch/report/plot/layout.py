"""The branch plot's layout: from its data to the figure's axes, sizes, colours and texts.

Pure decisions that need no figure, so they can be tested by value: the x axis (its limits, and
the break that gives a long warm-up an axis of its own), the y limits, line and marker sizes for
the number of rows, the colour scale and its bar's ticks, the row labels, and the title.
`hpsearch.report.plot.draw` applies them. matplotlib is imported only inside the functions that
need its colour maps or tick rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hpsearch.report.plot.colors import BELOW_SHARE
from hpsearch.report.plot.data import BranchPlotData

RGBA = tuple[float, float, float, float]

# A warm-up longer than the trials would squeeze every branch into a sliver at the right; above
# this share of the x range, it is drawn on an axis of its own this wide (a broken axis).
WARMUP_SHARE = 0.25

# Up to this many rows, one label per row still reads; beyond, only the best is labelled.
LABELLED_ROWS = 40

NEUTRAL: RGBA = (0.6, 0.6, 0.6, 1.0)
FADED_ALPHA = 0.3


@dataclass(frozen=True)
class Sizes:
    """Line width and marker area for the number of rows: thinner and smaller as rows grow."""

    line_width: float
    marker_size: float


def n_rows(data: BranchPlotData) -> int:
    """The tree panel's rows: one a branch, fewer in a fork tree (a child continues on its
    parent's row)."""
    return data.n_rows or len(data.branches)


def sizes(data: BranchPlotData) -> Sizes:
    n = max(n_rows(data), 1)
    return Sizes(
        line_width=min(2.0, max(0.6, 60.0 / n)), marker_size=min(40.0, max(8.0, 2400.0 / n))
    )


@dataclass(frozen=True)
class AxisBreak:
    """A long warm-up drawn on an axis of its own, left of the trials' one, with a break
    between them: each part is linear and has its own ticks, so neither misleads at a glance.

    `warmup` and `trials` are the two parts' x limits (the trials' starts a little before the
    fork, so the fork and the trunk's last stretch show on it too); `widths` their shares of
    the figure's width; `factor` how many times denser the warm-up's part is drawn.
    """

    warmup: tuple[float, float]
    trials: tuple[float, float]
    widths: tuple[float, float]
    factor: float
    warmup_ticks: tuple[float, ...]
    trial_ticks: tuple[float, ...]


def axis_break(lo: float, fork: float, hi: float, right_pad: float) -> AxisBreak | None:
    """The break for a warm-up [lo, fork] longer than WARMUP_SHARE * 1.6 of the range up to
    `hi` (None: short enough to draw on one linear axis); `right_pad` is the share of the
    trials' width left free on the right for the row labels."""
    from matplotlib.ticker import MaxNLocator

    warm, trials = fork - lo, hi - fork
    if warm <= 0 or trials <= 0 or warm / (warm + trials) <= WARMUP_SHARE * 1.6:
        return None
    steps = [1, 2, 2.5, 5, 10]
    warm_ticks = [t for t in MaxNLocator(3, steps=steps).tick_values(lo, fork) if lo <= t <= fork]
    trial_ticks = MaxNLocator(7, steps=steps).tick_values(fork, hi)
    trial_ticks = [t for t in trial_ticks if fork <= t <= hi + trials / 1000]
    factor = (warm / WARMUP_SHARE) / (trials / (1 - WARMUP_SHARE))
    return AxisBreak(
        warmup=(lo - 0.02 * warm, fork),
        trials=(fork - 0.015 * trials, hi + right_pad * trials),
        widths=(WARMUP_SHARE, 1 - WARMUP_SHARE),
        factor=factor,
        warmup_ticks=tuple(float(t) for t in warm_ticks),
        trial_ticks=tuple(float(t) for t in trial_ticks),
    )


@dataclass(frozen=True)
class XAxis:
    """The shared x axis: its limits, or (`split`) a warm-up axis and a trials' axis."""

    lo: float
    hi: float
    split: AxisBreak | None


def x_axis(data: BranchPlotData) -> XAxis:
    """Limits that hold every branch, the trunk and the warm-up curve, with room on the right
    for the row labels (less when rows are not labelled)."""
    xs = [s.x0 for b in data.branches for s in b.segments] + [b.x1 for b in data.branches]
    xs += [p[0] for p in data.warmup_curve]
    xs += [data.trunk.x0, data.trunk.x1] if data.trunk else [0.0]
    x_lo, x_hi = min(xs), max(xs)
    right_pad = 0.09 if len(data.branches) <= LABELLED_ROWS else 0.045
    if data.tree:  # the finalists' labels, right of the budget's end
        right_pad = 0.06
    split = None
    if data.trunk is not None and x_hi > data.trunk.x1:
        split = axis_break(x_lo, data.trunk.x1, x_hi, right_pad)
    if split is not None:
        return XAxis(split.warmup[0], split.trials[1], split)
    width = (x_hi - x_lo) or 1.0
    return XAxis(x_lo - 0.01 * width, x_hi + right_pad * width, None)


# A fork tree's best note (lineage, a schedule per changed param, params) is taller than a
# forked trial's and has a line per param: the room above the top row is sized for its lines,
# in points of the default figure's tree panel (about 270 high), as a share of the panel.
TREE_PANEL_POINTS = 270.0
NOTE_LINE_POINTS = 10.4  # a line of the note (8 pt type)
NOTE_ROOM_POINTS = 30.0  # its offset above the star, its frame, and a margin


def tree_y_limits(data: BranchPlotData) -> tuple[float, float]:
    """Every row, and room above the trunk for its label and the best trial's note."""
    rows = n_rows(data)
    if data.tree:
        lines = (data.best_text or "").count("\n") + 1
        share = (NOTE_ROOM_POINTS + lines * NOTE_LINE_POINTS) / TREE_PANEL_POINTS
        share = min(0.45, max(0.2, share))
        return -(rows + 1), max(3.0, share / (1 - share) * (rows + 1))
    headroom = max(3.0, 0.14 * max(rows, 1))
    return -(rows + 1), headroom


def curve_y_limits(data: BranchPlotData) -> tuple[float, float] | None:
    """The curves panel's y range with 5% padding (None: no finite value to show)."""
    ys = [p[1] for cv in data.curves for p in cv.points] + [p[1] for p in data.warmup_curve]
    ys = [v for v in ys if math.isfinite(v)]
    if not ys:
        return None
    lo, hi = min(ys), max(ys)
    pad = 0.05 * (hi - lo) or 0.5
    return lo - pad, hi + pad


# The row labels start this far right of a branch's end: clear of the best trial's star
# (260 pt^2, about 8 points from its centre to its tips), so no label sits beside another
# row's mark.
LABEL_OFFSET = 10.0


@dataclass(frozen=True)
class RowLabel:
    """A row's label at its branch's end: (x, y) in data units, `dx` points further right."""

    number: int
    text: str
    x: float
    y: float
    dx: float
    faded: bool
    bold: bool


def row_labels(data: BranchPlotData) -> list[RowLabel]:
    """A label per row, on its row, the best's too (bold, beside its star); once there are too
    many rows to read, only the best's."""
    rows = data.branches if len(data.branches) <= LABELLED_ROWS else [
        b for b in data.branches if b.is_best
    ]  # fmt: skip
    return [RowLabel(b.number, b.label, b.x1, b.y, LABEL_OFFSET, b.faded, b.is_best) for b in rows]


class ColorScale:
    """Objective -> colour: through the data's colour stops (see `BranchPlotData`) onto
    `data.cmap`; a branch with no value is neutral grey, a faded one (pruned, failed)
    translucent."""

    def __init__(self, data: BranchPlotData) -> None:
        import matplotlib

        self.data = data
        self.cmap = matplotlib.colormaps[data.cmap]
        self._better_end = data.vmax if data.direction == "maximize" else data.vmin

    def rgba(self, value: float | None, faded: bool = False) -> RGBA:
        position = self.data.color_position(value)
        r, g, b, _ = NEUTRAL if position is None else self.cmap(position)
        return (r, g, b, FADED_ALPHA if faded else 1.0)

    def best_color(self) -> Any:
        """The colour of the good end of the scale (for the legend's best-trial entries)."""
        position = self.data.color_position(self._better_end)
        return self.cmap(1.0 if position is None else position)


@dataclass(frozen=True)
class ColorbarTicks:
    """The colour bar's ticks (positions on the map, 0..1, and their values' labels), and
    where the ranked part for values worse than every finished trial begins (None: none)."""

    positions: tuple[float, ...]
    labels: tuple[str, ...]
    below_from: float | None
    below_text: str


def colorbar_ticks(data: BranchPlotData) -> ColorbarTicks:
    """Round values over the finished trials' range; the worst and the median of the ranked
    values below it; ticks closer than 6 % of the bar to a kept one are left out. Labels take
    3 significant digits, more where that would print two ticks alike (a narrow range)."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = data.vmin, data.vmax
    values = [float(v) for v in MaxNLocator(4).tick_values(lo, hi) if lo <= v <= hi]
    ranked = [v for v, _ in data.color_stops if v < lo or v > hi]
    if ranked:
        values += [ranked[0], ranked[len(ranked) // 2]] if data.direction == "maximize" else [
            ranked[-1], ranked[len(ranked) // 2]
        ]  # fmt: skip
    kept: list[tuple[float, float]] = []
    for v in values:
        pos = data.color_position(v)
        if pos is not None and all(abs(pos - k) >= 0.06 for k, _ in kept):
            kept.append((pos, v))
    kept.sort()
    digits = next((d for d in range(3, 8) if len({f"{v:.{d}g}" for _, v in kept}) == len(kept)), 8)
    below_from = None
    if data.n_below:
        below_from = BELOW_SHARE if data.direction == "maximize" else 1 - BELOW_SHARE
    text = f"{data.n_below} worse than all finished, by rank" if data.n_below else ""
    return ColorbarTicks(
        tuple(k for k, _ in kept), tuple(f"{v:.{digits}g}" for _, v in kept), below_from, text
    )


def default_title(data: BranchPlotData) -> str:
    """Study name, metric, direction, number of trials by state, best value."""
    words = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
    order = [*words, *sorted(set(data.counts) - set(words))]
    states = ", ".join(
        f"{data.counts[s]} {words.get(s, s.lower())}" for s in order if data.counts.get(s)
    )
    head = f"{data.study}: {data.metric} ({data.direction}), {data.n_trials} trials"
    if states:
        head += f" ({states})"
    if data.best_value is not None:
        head += f" — best {data.best_value:.4g} (trial #{data.best_number})"
    return head
