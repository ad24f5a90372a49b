"""The branch plot's layout: from its data to the figure's axes, sizes, colours and texts.

Pure decisions that need no figure, so they can be tested by value: the x axis (its limits and
the compression of a long warm-up), the y limits, line and marker sizes for the number of rows,
the colour scale, which rows get a label, and the title. `hpsearch.report.plot.draw` applies
them. matplotlib is imported only inside the functions that need its colour maps or tick rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hpsearch.report.plot.data import Branch, BranchPlotData

RGBA = tuple[float, float, float, float]

# A warm-up longer than the trials would squeeze every branch into a sliver at the right; above
# this share of the x range, its stretch of the axis is compressed down to it.
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


def sizes(data: BranchPlotData) -> Sizes:
    n = max(len(data.branches), 1)
    return Sizes(
        line_width=min(2.0, max(0.6, 60.0 / n)), marker_size=min(40.0, max(8.0, 2400.0 / n))
    )


@dataclass(frozen=True)
class WarmupCompression:
    """A piecewise linear x scale: the warm-up [lo, fork] is squeezed by `k` into `squeezed`
    (trial units), the trials' stretch after `fork` is drawn as it is.

    Both stretches still read truthfully against their own ticks (`ticks`: a few in the warm-up,
    the fork, then the trials' own).
    """

    lo: float
    fork: float
    k: float
    squeezed: float
    ticks: tuple[float, ...]

    @property
    def factor(self) -> float:
        """How many times the warm-up is compressed."""
        return 1 / self.k

    def forward(self, x: Any) -> Any:
        import numpy as np

        x = np.asarray(x, dtype=float)
        lo, k = self.lo, self.k
        return np.where(x <= self.fork, lo + (x - lo) * k, lo + self.squeezed + (x - self.fork))

    def inverse(self, u: Any) -> Any:
        import numpy as np

        u = np.asarray(u, dtype=float)
        lo, squeezed = self.lo, self.squeezed
        return np.where(u <= lo + squeezed, lo + (u - lo) / self.k, self.fork + (u - lo - squeezed))


def warmup_compression(lo: float, fork: float, hi: float) -> WarmupCompression | None:
    """The compression of the warm-up [lo, fork] to WARMUP_SHARE of the width up to `hi`, or None
    when the warm-up is short enough to draw as it is."""
    from matplotlib.ticker import MaxNLocator

    warm, trials = fork - lo, hi - fork
    if warm <= 0 or warm / (warm + trials) <= WARMUP_SHARE * 1.6:
        return None
    squeezed = trials * WARMUP_SHARE / (1 - WARMUP_SHARE)
    steps = [1, 2, 2.5, 5, 10]
    warm_ticks = MaxNLocator(3, steps=steps).tick_values(lo, fork)
    trial_ticks = MaxNLocator(8, steps=steps).tick_values(fork, hi)
    step = trial_ticks[1] - trial_ticks[0]
    ticks = [t for t in warm_ticks if lo <= t <= fork - warm / 4] + [fork]
    ticks += [t for t in trial_ticks if fork + step / 2 <= t <= hi + step / 100]
    return WarmupCompression(lo, fork, squeezed / warm, squeezed, tuple(float(t) for t in ticks))


@dataclass(frozen=True)
class XAxis:
    """The shared x axis: its limits, and the warm-up's compression (None: a linear axis)."""

    lo: float
    hi: float
    compression: WarmupCompression | None


def x_axis(data: BranchPlotData) -> XAxis:
    """Limits that hold every branch, the trunk and the warm-up curve, with room on the right
    for the row labels (less when rows are not labelled)."""
    xs = [s.x0 for b in data.branches for s in b.segments] + [b.x1 for b in data.branches]
    xs += [p[0] for p in data.warmup_curve]
    xs += [data.trunk.x0, data.trunk.x1] if data.trunk else [0.0]
    x_lo, x_hi = min(xs), max(xs)
    right_pad = 0.09 if len(data.branches) <= LABELLED_ROWS else 0.045
    compression = None
    if data.trunk is not None and x_hi > data.trunk.x1:
        compression = warmup_compression(x_lo, data.trunk.x1, x_hi)
    if data.trunk is not None and compression is not None:
        width = (x_hi - data.trunk.x1) / (1 - WARMUP_SHARE)  # the axis width in trial units
        return XAxis(
            x_lo - 0.01 * width * compression.factor, x_hi + right_pad * width, compression
        )
    width = (x_hi - x_lo) or 1.0
    return XAxis(x_lo - 0.01 * width, x_hi + right_pad * width, None)


def tree_y_limits(data: BranchPlotData) -> tuple[float, float]:
    """Every row, and room above the trunk for its label and the best trial's note."""
    headroom = max(3.0, 0.14 * max(len(data.branches), 1))
    return -(len(data.branches) + 1), headroom


def curve_y_limits(data: BranchPlotData) -> tuple[float, float] | None:
    """The curves panel's y range with 5% padding (None: no finite value to show)."""
    ys = [p[1] for cv in data.curves for p in cv.points] + [p[1] for p in data.warmup_curve]
    ys = [v for v in ys if math.isfinite(v)]
    if not ys:
        return None
    lo, hi = min(ys), max(ys)
    pad = 0.05 * (hi - lo) or 0.5
    return lo - pad, hi + pad


def labelled_branches(data: BranchPlotData) -> list[Branch]:
    """The branches that get a row label at their end: every one but the best (which has its
    own note), and none once there are too many rows to read."""
    if len(data.branches) > LABELLED_ROWS:
        return []
    return [b for b in data.branches if not b.is_best]


class ColorScale:
    """Objective → colour: `data.cmap` over [vmin, vmax], clipped at both ends; a branch with
    no value is neutral grey, a faded one (pruned, failed) translucent."""

    def __init__(self, data: BranchPlotData) -> None:
        import matplotlib
        from matplotlib.colors import Normalize

        self.cmap = matplotlib.colormaps[data.cmap]
        self.norm = Normalize(data.vmin, data.vmax, clip=True)
        self._better_end = data.vmax if data.direction == "maximize" else data.vmin

    def rgba(self, value: float | None, faded: bool = False) -> RGBA:
        r, g, b, _ = NEUTRAL if value is None else self.cmap(self.norm(value))
        return (r, g, b, FADED_ALPHA if faded else 1.0)

    def best_color(self) -> Any:
        """The colour of the good end of the scale (for the legend's best-trial entries)."""
        return self.cmap(self.norm(self._better_end))


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
