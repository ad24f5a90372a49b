"""The branch plot (SPEC section 7): computing its data, and drawing it.

Like `optuna.visualization`, the work is split in two. `branch_plot_data` is a pure function of a
`StudyView` that returns plain dataclasses (every coordinate, colour value and marker the figure
shows), so tests assert on values instead of pixels. `draw_branch_plot` only draws that data, with
matplotlib's Agg canvas, without touching the user's pyplot backend::

    data = branch_plot_data(view, x="epochs")
    draw_branch_plot(data, "branches.png")
    # or both at once:
    plot_study(view, "branches.svg")

The figure: the warm-up is the trunk along y=0; each trial is a branch that leaves the trunk at
its fork point, fans out to a row of its own and runs to where it finished, was pruned, failed
or (while running) its latest checkpoint; colour is the objective; a second panel shows every
trial's objective curve against the same x axis.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpsearch.errors import UsageError
from hpsearch.report.views import StudyView, TrialView

PLOT_SUFFIXES = (".png", ".svg", ".pdf")
X_AXES = ("epochs", "samples")

# Fraction of the trials' x span (first fork to last end) a branch takes to climb from the trunk
# to its row: short enough that x still reads as progress, long enough that 200 connectors fan out.
CONNECTOR_FRACTION = 0.04


class PlotFormatError(UsageError, ValueError):
    """The output path of a plot has a suffix that no renderer handles."""


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
    state: str
    value: float | None
    x0: float
    x1: float
    y: float
    color_value: float | None
    faded: bool
    marker: str
    is_best: bool
    label: str
    attempts: tuple[int, ...] = ()
    resumes: tuple[float, ...] = ()
    segments: tuple[Segment, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Curve:
    """The objective curve of one branch for the second panel: (x, objective) points.

    For a continuation chain the points of the failed attempts come first, up to where the
    continuation took over.
    """

    number: int
    state: str
    points: tuple[Point, ...]
    color_value: float | None
    faded: bool
    marker: str
    is_best: bool


@dataclass(frozen=True)
class BranchPlotData:
    """Everything the branch plot shows, as plain values (see `branch_plot_data`).

    `trunk` is None in classic mode (no warm-up). `best_path` runs from the start of the trunk
    through the fork to the best trial's end (empty when no trial is COMPLETE). Colours map
    `color_value` through `cmap` over [`vmin`, `vmax`]; `cmap` is reversed for "minimize" so the
    good end of the scale is always the same colour. `not_drawn` lists trials with nothing to draw
    yet (WAITING).
    """

    study: str
    metric: str
    direction: str
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

    def branch(self, number: int) -> Branch:
        """The branch that draws trial `number` (also when it is a failed, continued attempt)."""
        for b in self.branches:
            if b.number == number or number in b.attempts:
                return b
        raise KeyError(f"trial #{number} is not drawn (not_drawn={list(self.not_drawn)})")


# --------------------------------------------------------------------------------------------
# Computing
# --------------------------------------------------------------------------------------------


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

    chains, not_drawn = _chains(view.trials)
    best = view.best()
    best_number = best.number if best is not None else None

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
                points=_chain_points(chain, scale),
                color_value=branch.color_value,
                faded=branch.faded,
                marker=branch.marker,
                is_best=branch.is_best,
            )
        )

    trunk = None
    if not view.classic and view.warmup_progress > 0:
        trunk = Segment(0.0, 0.0, view.warmup_progress * scale, 0.0, None)

    best_path: tuple[Segment, ...] = ()
    best_text = None
    if best is not None:
        best_branch = next(b for b in branches if b.is_best)
        best_path = ((trunk,) if trunk is not None else ()) + best_branch.segments
        best_text = _best_text(view, best, best_branch)

    vmin, vmax = _color_range(branches)
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
        branches=tuple(branches),
        best_number=best_number,
        best_value=best.value if best is not None else None,
        best_path=best_path,
        best_text=best_text,
        curves=tuple(curves),
        warmup_curve=tuple((p * scale, v) for p, v in view.warmup_curve),
        vmin=vmin,
        vmax=vmax,
        cmap="viridis" if maximize else "viridis_r",
        counts=counts,
        n_trials=len(view.trials),
        not_drawn=not_drawn,
    )


def _chains(trials: Sequence[TrialView]) -> tuple[list[list[TrialView]], tuple[int, ...]]:
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


_MARKERS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
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


def _chain_points(chain: list[TrialView], scale: float) -> tuple[Point, ...]:
    points: list[Point] = []
    for k, t in enumerate(chain):
        limit = chain[k + 1].fork_progress if k + 1 < len(chain) else math.inf
        points.extend((p * scale, v) for p, v in t.intermediate if p <= limit)
    return tuple(points)


def _color_range(branches: Sequence[Branch]) -> tuple[float, float]:
    """Min and max objective of the COMPLETE trials.

    Pruned trials' values were measured earlier in training and would stretch the scale until
    every finished trial looks alike; they only count when fewer than two trials are complete.
    Values outside the range are drawn in the colour of the nearest end.
    """
    values = [b.color_value for b in branches if b.state == "COMPLETE"]
    finite = [v for v in values if v is not None]
    if len(set(finite)) < 2:
        pruned = [b.color_value for b in branches if b.state == "PRUNED"]
        finite += [v for v in pruned if v is not None]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if lo == hi:
        pad = abs(lo) * 0.05 or 0.5
        return lo - pad, hi + pad
    return lo, hi


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


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

# A warm-up longer than the trials would squeeze every branch into a sliver at the right; above
# this share of the x range, its stretch of the axis is compressed down to it.
WARMUP_SHARE = 0.25

_NEUTRAL = (0.6, 0.6, 0.6, 1.0)
_FADED_ALPHA = 0.3
_TRUNK_COLOR = "0.15"
_FAIL_COLOR = "#d62728"


def _check_suffix(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise PlotFormatError(
            f"plot file must end in one of {', '.join(PLOT_SUFFIXES)}, but got {os.fspath(path)!r}"
        )
    return suffix


def draw_branch_plot(
    data: BranchPlotData,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (12.0, 8.0),
    dpi: int = 120,
) -> None:
    """Draw `data` into `path` (.png, .svg or .pdf, chosen by suffix), headless.

    Uses a `Figure` with its own Agg canvas, so it neither needs a display nor changes the
    backend of a user's pyplot session. The title defaults to the study name, metric, direction,
    number of trials and best value.
    """
    suffix = _check_suffix(path)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax_tree, ax_curves = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    _draw(fig, ax_tree, ax_curves, data, title)
    fig.savefig(path, format=suffix[1:], dpi=dpi)


def plot_study(
    view: StudyView,
    path: str | os.PathLike[str],
    *,
    x: str = "epochs",
    title: str | None = None,
) -> BranchPlotData:
    """Compute and draw the branch plot of `view` into `path`; returns the data it drew."""
    _check_suffix(path)  # fail before any work
    data = branch_plot_data(view, x=x)
    draw_branch_plot(data, path, title=title)
    return data


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


def _draw(fig: Any, ax_tree: Any, ax_curves: Any, data: BranchPlotData, title: str | None) -> None:
    import matplotlib
    from matplotlib import patheffects
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    cmap = matplotlib.colormaps[data.cmap]
    norm = Normalize(data.vmin, data.vmax, clip=True)
    n = max(len(data.branches), 1)
    lw = min(2.0, max(0.6, 60.0 / n))
    msize = min(40.0, max(8.0, 2400.0 / n))

    def rgba(value: float | None, faded: bool) -> tuple[float, float, float, float]:
        r, g, b, _ = _NEUTRAL if value is None else cmap(norm(value))
        return (r, g, b, _FADED_ALPHA if faded else 1.0)

    outline = [patheffects.Stroke(linewidth=lw * 2 + 4, foreground="black"), patheffects.Normal()]

    # --- top panel: trunk and branches ---------------------------------------------------------
    segs, colors = [], []
    for b in data.branches:
        c = rgba(b.color_value, b.faded)
        for s in b.segments:
            segs.append(((s.x0, s.y0), (s.x1, s.y1)))
            colors.append(c)
    ax_tree.add_collection(LineCollection(segs, colors=colors, linewidths=lw, zorder=2))

    if data.trunk is not None:
        t = data.trunk
        ax_tree.plot(
            [t.x0, t.x1], [0, 0], color=_TRUNK_COLOR, lw=4, solid_capstyle="butt", zorder=4
        )
        ax_tree.plot([t.x1], [0], "o", color=_TRUNK_COLOR, ms=7, zorder=5)
        ax_tree.annotate(
            "fork: trials start\nfrom this checkpoint",
            (t.x1, 0),
            xytext=(-8, -10),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=8,
            color="0.3",
        )
        for ax in (ax_tree, ax_curves):
            ax.axvline(t.x1, color="0.5", lw=0.8, ls="--", zorder=1)

    def scatter(kind: str, **kw: Any) -> None:
        pts = [(b.x1, b.y, b) for b in data.branches if b.marker == kind and not b.is_best]
        if pts:
            ax_tree.scatter([p[0] for p in pts], [p[1] for p in pts], zorder=3, **kw)

    branch_c = {id(b): rgba(b.color_value, False) for b in data.branches}

    def cols(kind: str, alpha: float) -> list[tuple[float, float, float, float]]:
        bs = [b for b in data.branches if b.marker == kind and not b.is_best]
        return [(*branch_c[id(b)][:3], alpha) for b in bs]

    scatter("complete", marker="o", s=msize, c=cols("complete", 1.0), edgecolors="none")
    scatter("pruned", marker="x", s=msize * 1.2, c=cols("pruned", 0.8), linewidths=1.2)
    scatter("failed", marker="D", s=msize, c=_FAIL_COLOR, edgecolors="black", linewidths=0.5)
    scatter("running", marker=">", s=msize * 1.5, c=cols("running", 1.0), edgecolors="black")
    resumes = [(x, b.y) for b in data.branches for x in b.resumes]
    if resumes:
        ax_tree.scatter(
            *zip(*resumes, strict=True), marker="|", s=msize * 3, c="black", lw=1.5, zorder=7
        )

    best = next((b for b in data.branches if b.is_best), None)
    if best is not None and data.best_path:
        c = rgba(best.color_value, False)
        branch_part = [s for s in data.best_path if s.trial is not None]
        xs_b = [branch_part[0].x0, *(s.x1 for s in branch_part)]
        ys_b = [branch_part[0].y0, *(s.y1 for s in branch_part)]
        ax_tree.plot(  # one polyline, so the outline has no seams where attempts hand over
            xs_b,
            ys_b,
            color=c,
            lw=max(3.5, lw * 2 + 1.5),
            solid_capstyle="butt",
            solid_joinstyle="round",
            path_effects=outline,
            zorder=6,
        )
        ax_tree.scatter(
            [best.x1], [best.y], marker="*", s=260, c=[c], edgecolors="black", lw=1.2, zorder=7
        )
        ax_tree.annotate(
            data.best_text,
            (best.x1, best.y),
            xytext=(-6, 14),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=9,
            bbox={"boxstyle": "round,pad=0.35", "fc": "white", "ec": "black", "alpha": 0.92},
            arrowprops={"arrowstyle": "->", "color": "black", "lw": 1},
            zorder=8,
        )

    if len(data.branches) <= 40:  # one label per row still reads; beyond, only the best
        for b in data.branches:
            if b.is_best:
                continue
            ax_tree.annotate(
                b.label,
                (b.x1, b.y),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color="0.35" if b.faded else "0.1",
            )

    xs = [s.x0 for b in data.branches for s in b.segments] + [b.x1 for b in data.branches]
    xs += [p[0] for p in data.warmup_curve]
    xs += [data.trunk.x0, data.trunk.x1] if data.trunk else [0.0]
    x_lo, x_hi = min(xs), max(xs)
    right_pad = 0.09 if len(data.branches) <= 40 else 0.045
    factor = None
    if data.trunk is not None and x_hi > data.trunk.x1:
        factor = _compress_warmup(ax_tree, x_lo, data.trunk.x1, x_hi)
    if data.trunk is not None and factor:
        width = (x_hi - data.trunk.x1) / (1 - WARMUP_SHARE)  # the axis width in trial units
        ax_tree.set_xlim(x_lo - 0.01 * width * factor, x_hi + right_pad * width)
    else:
        width = (x_hi - x_lo) or 1.0
        ax_tree.set_xlim(x_lo - 0.01 * width, x_hi + right_pad * width)
    if data.trunk is not None:
        t = data.trunk
        note = f", x axis compressed {factor:.3g}×" if factor else ""
        ax_tree.annotate(
            f"warm-up, shared by all trials{note}",
            (t.x0, 0),
            xytext=(2, 6),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=9,
        )
        if factor:
            for ax in (ax_tree, ax_curves):
                ax.axvspan(t.x0, t.x1, color="0.5", alpha=0.08, lw=0, zorder=0)
    headroom = max(3.0, 0.14 * n)  # room above the trunk for its label and the best's note
    ax_tree.set_ylim(-(len(data.branches) + 1), headroom)
    ax_tree.set_yticks([])
    ax_tree.set_ylabel(
        "trials, one row each\n(completed by value, best on top;\nthen running, pruned, failed)"
    )
    for side in ("top", "right", "left"):
        ax_tree.spines[side].set_visible(False)

    # --- bottom panel: objective curves ----------------------------------------------------------
    curve_lines, curve_colors = [], []
    ends: dict[str, list[tuple[float, float]]] = {}
    for cv in data.curves:
        if cv.is_best or not cv.points:
            continue
        curve_lines.append(cv.points)
        curve_colors.append(rgba(cv.color_value, cv.faded))
        if cv.marker == "pruned":
            ends.setdefault("pruned", []).append(cv.points[-1])
    ax_curves.add_collection(
        LineCollection(curve_lines, colors=curve_colors, linewidths=lw * 0.8, zorder=2)
    )
    if ends.get("pruned"):
        ax_curves.scatter(
            *zip(*ends["pruned"], strict=True), marker="x", s=msize * 0.8, c="0.4", lw=1, zorder=3
        )
    if data.warmup_curve:
        ax_curves.plot(*zip(*data.warmup_curve, strict=True), color=_TRUNK_COLOR, lw=2.5, zorder=4)
    best_curve = next((cv for cv in data.curves if cv.is_best), None)
    if best_curve is not None and best_curve.points:
        ax_curves.plot(
            *zip(*best_curve.points, strict=True),
            color=rgba(best_curve.color_value, False),
            lw=lw * 2 + 1,
            path_effects=outline,
            zorder=5,
        )
    ys = [p[1] for cv in data.curves for p in cv.points] + [p[1] for p in data.warmup_curve]
    ys = [v for v in ys if math.isfinite(v)]
    if ys:
        lo, hi = min(ys), max(ys)
        pad = 0.05 * (hi - lo) or 0.5
        ax_curves.set_ylim(lo - pad, hi + pad)
    ax_curves.set_ylabel(data.metric)
    ax_curves.set_xlabel(data.x_label)
    ax_curves.grid(alpha=0.3)
    for side in ("top", "right"):
        ax_curves.spines[side].set_visible(False)

    # --- colour bar, legend, title ---------------------------------------------------------------
    sm = ScalarMappable(norm=Normalize(data.vmin, data.vmax), cmap=cmap)
    cbar = fig.colorbar(sm, ax=[ax_tree, ax_curves], shrink=0.9, pad=0.01, aspect=40)
    cbar.set_label(f"{data.metric} (final value)   better →")
    if data.direction != "maximize":
        cbar.ax.invert_yaxis()  # better is always up

    proxy_c = cmap(norm(data.vmax if data.direction == "maximize" else data.vmin))
    kinds = {b.marker for b in data.branches if not b.is_best}
    handles = []
    if data.trunk is not None:
        handles.append(Line2D([], [], color=_TRUNK_COLOR, lw=4, label="warm-up (trunk)"))
    if best is not None:
        handles += [
            Line2D([], [], color=proxy_c, lw=3, path_effects=outline, label="best trial's path"),
            Line2D([], [], color=proxy_c, marker="*", ms=13, mec="black", ls="", label="best"),
        ]
    legend_marks: dict[str, dict[str, Any]] = {
        "complete": {"marker": "o", "ms": 6, "color": "0.4", "label": "completed"},
        "pruned": {"marker": "x", "ms": 7, "mew": 1.5, "color": "0.4", "label": "pruned (faded)"},
        "failed": {"marker": "D", "ms": 6, "mec": "black", "color": _FAIL_COLOR, "label": "failed"},
        "running": {"marker": ">", "ms": 8, "mec": "black", "color": "0.4", "label": "running"},
    }
    handles += [Line2D([], [], ls="", **legend_marks[k]) for k in legend_marks if k in kinds]
    if resumes:
        label = "resumed after a crash"
        handles.append(
            Line2D([], [], color="black", marker="|", ms=10, mew=1.5, ls="", label=label)
        )
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    fig.suptitle(title if title is not None else default_title(data), fontsize=12)


def _compress_warmup(ax: Any, lo: float, fork: float, hi: float) -> float | None:
    """Compress the x axis over the warm-up [lo, fork] to WARMUP_SHARE of the width.

    Piecewise linear, so both stretches still read truthfully against their own ticks; returns the
    compression factor, or None when the warm-up is short enough to draw as it is.
    """
    import numpy as np
    from matplotlib.ticker import FixedLocator, MaxNLocator

    warm, trials = fork - lo, hi - fork
    if warm <= 0 or warm / (warm + trials) <= WARMUP_SHARE * 1.6:
        return None
    squeezed = trials * WARMUP_SHARE / (1 - WARMUP_SHARE)
    k = squeezed / warm

    def forward(x: Any) -> Any:
        x = np.asarray(x, dtype=float)
        return np.where(x <= fork, lo + (x - lo) * k, lo + squeezed + (x - fork))

    def inverse(u: Any) -> Any:
        u = np.asarray(u, dtype=float)
        return np.where(u <= lo + squeezed, lo + (u - lo) / k, fork + (u - lo - squeezed))

    ax.set_xscale("function", functions=(forward, inverse))  # shared with the curves panel
    steps = [1, 2, 2.5, 5, 10]
    warm_ticks = MaxNLocator(3, steps=steps).tick_values(lo, fork)
    trial_ticks = MaxNLocator(8, steps=steps).tick_values(fork, hi)
    step = trial_ticks[1] - trial_ticks[0]
    ticks = [t for t in warm_ticks if lo <= t <= fork - warm / 4] + [fork]
    ticks += [t for t in trial_ticks if fork + step / 2 <= t <= hi + step / 100]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    return 1 / k
