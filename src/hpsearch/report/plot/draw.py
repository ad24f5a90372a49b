"""Drawing the branch plot with matplotlib (with `keys` and, for a fork tree, `drawtree`: the
only modules of the plot that draw).

`draw_branch_plot` draws a `BranchPlotData` on a `Figure` with its own Agg canvas, so it needs no
display and leaves a user's pyplot backend alone; every decision about axes, sizes, colours and
labels comes from `hpsearch.report.plot.layout`. matplotlib is imported inside the functions, so
importing the package stays cheap for `status` and `export`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hpsearch.errors import UsageError
from hpsearch.report.plot.data import Branch, BranchPlotData, branch_plot_data
from hpsearch.report.plot.drawtree import (
    DrawnLabels,
    draw_level_ticks,
    draw_rungs,
    draw_tree_labels,
    measure,
    panel_of,
)
from hpsearch.report.plot.keys import FAIL_COLOR, TRUNK_COLOR, draw_colorbar, draw_legend
from hpsearch.report.plot.layout import (
    ColorScale,
    Sizes,
    XAxis,
    curve_y_limits,
    default_title,
    row_labels,
    sizes,
    tree_y_limits,
    x_axis,
)
from hpsearch.report.plot.treelayout import NOTE_FONT, NOTE_OFFSET, alpha, width
from hpsearch.report.views import StudyView

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


class PlotFormatError(UsageError, ValueError):
    """The output path of a plot has a suffix that no renderer handles."""


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
) -> DrawnLabels | None:
    """Draw `data` into `path` (.png, .svg or .pdf, chosen by suffix), headless; for a fork
    tree, returns where its labels went (`DrawnLabels`).

    Uses a `Figure` with its own Agg canvas, so it neither needs a display nor changes the
    backend of a user's pyplot session. The title defaults to the study name, metric, direction,
    number of trials and best value.
    """
    suffix = _check_suffix(path)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    axis = x_axis(data)
    # a broken axis: its two parts as close as the break marks allow
    engine = ConstrainedLayoutEngine(w_pad=0.01, wspace=0.0) if axis.split else None
    fig = Figure(figsize=figsize, dpi=dpi, layout=engine or "constrained")
    FigureCanvasAgg(fig)
    if axis.split is None:
        ax_tree, ax_curves = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        columns = [(ax_tree, ax_curves)]
    else:  # the warm-up on an axis of its own, left of the trials' (a broken axis)
        grid = fig.subplots(
            2, 2, sharex="col", sharey="row", height_ratios=[3, 2], width_ratios=axis.split.widths
        )
        columns = [(grid[0][0], grid[1][0]), (grid[0][1], grid[1][1])]
    drawn = _draw(fig, columns, data, axis, title)
    fig.savefig(path, format=suffix[1:], dpi=dpi)
    if drawn is not None:  # measured as saved
        return measure(fig, columns[-1][0], *drawn)
    return None


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


def _draw(
    fig: Any, columns: list[tuple[Any, Any]], data: BranchPlotData, axis: XAxis, title: str | None
) -> tuple[list[Any], Any, Any] | None:
    """Both panels in each column (one, or the warm-up's and the trials' of a broken axis:
    everything is drawn in both and each shows its own x range), then the labels, the best
    trial's note, the colour bar, the legend and the title once. The order of the calls is the
    order of drawing where zorders tie. A fork tree's labels come last, placed on the tree
    panel as laid out (returned with the note and the generations' axis, to be measured)."""
    from matplotlib import patheffects

    scale = ColorScale(data)
    size = sizes(data)
    lw = size.line_width
    outline = [patheffects.Stroke(linewidth=lw * 2 + 4, foreground="black"), patheffects.Normal()]
    best = next((b for b in data.branches if b.is_best), None)

    main_tree, main_curves = columns[-1]
    _draw_branches(main_tree, data, scale, lw)
    for k, (ax_tree, ax_curves) in enumerate(columns):
        if data.trunk is not None:
            _draw_trunk(ax_tree, ax_curves, data)
        _style_tree_axes(ax_tree, data, ylabel=k == 0)
        if data.warmup_curve:
            ax_curves.plot(*zip(*data.warmup_curve, strict=True), color=TRUNK_COLOR, lw=2.5)
        _style_curves_axes(ax_curves, data, ylabel=k == 0, xlabel=ax_curves is main_curves)
    if data.tree:
        draw_rungs(columns, data)
    _draw_ends(main_tree, data, scale, size)
    if best is not None and data.best_path:
        _draw_best(main_tree, data, best, scale, lw, outline)
    _draw_curves(main_curves, data, scale, size, outline)
    note = None
    if best is not None and data.best_path:
        note = _draw_best_note(main_tree, data, best)
    if not data.tree:
        _draw_labels(main_tree, data)
    _set_x_axis(columns, data, axis)
    draw_colorbar(fig, [ax for column in columns for ax in column], data)
    draw_legend(fig, data, best is not None, scale, outline)
    fig.suptitle(title if title is not None else default_title(data), fontsize=12)
    if not data.tree:
        return None
    # the generations' names chosen for the panel's width before the layout (narrower than
    # after it: the names only get shorter), then the layout, then the labels on it
    top = draw_level_ticks(main_tree, data, panel_of(fig, main_tree).width)
    fig.get_layout_engine().execute(fig)
    labels = draw_tree_labels(main_tree, data, panel_of(fig, main_tree))
    fig.set_layout_engine("none")  # laid out: saving need not do it again (a second or so)
    return labels, note, top


# -- top panel: trunk and branches -----------------------------------------------------------------


def _draw_branches(ax: Any, data: BranchPlotData, scale: ColorScale, lw: float) -> None:
    """Every branch in its colour; in a fork tree survivors wider, ranked-out nodes quieter."""
    from matplotlib.collections import LineCollection

    segs, colors, widths = [], [], []
    for b in data.branches:
        c = scale.rgba(b.color_value, b.faded)
        if data.tree:
            c = (*c[:3], alpha(b))
        for s in b.segments:
            segs.append(((s.x0, s.y0), (s.x1, s.y1)))
            colors.append(c)
            widths.append(width(b, lw) if data.tree else lw)
    ax.add_collection(LineCollection(segs, colors=colors, linewidths=widths, zorder=2))


def _draw_trunk(ax_tree: Any, ax_curves: Any, data: BranchPlotData) -> None:
    """The warm-up along y=0, its fork point, and the fork's dashed line across both panels."""
    t = data.trunk
    assert t is not None
    ax_tree.plot([t.x0, t.x1], [0, 0], color=TRUNK_COLOR, lw=4, solid_capstyle="butt", zorder=4)
    ax_tree.plot([t.x1], [0], "o", color=TRUNK_COLOR, ms=7, zorder=5)
    for ax in (ax_tree, ax_curves):
        ax.axvline(t.x1, color="0.5", lw=0.8, ls="--", zorder=1)


def _draw_ends(ax: Any, data: BranchPlotData, scale: ColorScale, size: Sizes) -> None:
    """Each branch's end mark by how it ended (the best's is its star), and the resume ticks."""
    msize = size.marker_size
    others = [b for b in data.branches if not b.is_best]

    def scatter(kind: str, alpha: float | None, **kw: Any) -> None:
        ends = [b for b in others if b.marker == kind]
        if not ends:
            return
        if alpha is not None:  # the branch's colour at the mark's own opacity
            kw["c"] = [(*scale.rgba(b.color_value)[:3], alpha) for b in ends]
        ax.scatter([b.x1 for b in ends], [b.y for b in ends], zorder=3, **kw)

    if data.tree:  # where children fork: a survivor's end
        ends = [b for b in others if b.survivor]
        kw = {"marker": "o", "s": msize * 1.5, "edgecolors": "black", "linewidths": 0.6}
        if ends:
            colours = [scale.rgba(b.color_value) for b in ends]
            ax.scatter([b.x1 for b in ends], [b.y for b in ends], c=colours, zorder=4, **kw)
        others = [b for b in others if not b.survivor]
    scatter("complete", 1.0, marker="o", s=msize, edgecolors="none")
    scatter("pruned", 0.8, marker="x", s=msize * 1.2, linewidths=1.2)
    scatter("failed", None, marker="D", s=msize, c=FAIL_COLOR, edgecolors="black", linewidths=0.5)
    scatter("running", 1.0, marker=">", s=msize * 1.5, edgecolors="black")
    resumes = [(x, b.y) for b in data.branches for x in b.resumes]
    if resumes:
        ax.scatter(
            *zip(*resumes, strict=True), marker="|", s=msize * 3, c="black", lw=1.5, zorder=7
        )


def _draw_best(
    ax: Any, data: BranchPlotData, best: Branch, scale: ColorScale, lw: float, outline: list[Any]
) -> None:
    """The best trial's path, outlined, and its star."""
    c = scale.rgba(best.color_value)
    branch_part = [s for s in data.best_path if s.trial is not None]
    xs = [branch_part[0].x0, *(s.x1 for s in branch_part)]
    ys = [branch_part[0].y0, *(s.y1 for s in branch_part)]
    ax.plot(  # one polyline, so the outline has no seams where attempts hand over
        xs,
        ys,
        color=c,
        lw=max(3.5, lw * 2 + 1.5),
        solid_capstyle="butt",
        solid_joinstyle="round",
        path_effects=outline,
        zorder=6,
    )
    ax.scatter([best.x1], [best.y], marker="*", s=260, c=[c], edgecolors="black", lw=1.2, zorder=7)


def _draw_best_note(ax: Any, data: BranchPlotData, best: Branch) -> Any:
    """The best trial's value and params in a box above its star, with an arrow to it (in a
    fork tree also its lineage: smaller, and out of the layout, in the room kept for it)."""
    note = ax.annotate(
        data.best_text,
        (best.x1, best.y),
        xytext=NOTE_OFFSET if data.tree else (-6, 14),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=NOTE_FONT if data.tree else 9,
        bbox={"boxstyle": "round,pad=0.35", "fc": "white", "ec": "black", "alpha": 0.92},
        arrowprops={"arrowstyle": "->", "color": "black", "lw": 1},
        zorder=8,
    )
    if data.tree:
        note.set_in_layout(False)
    return note


def _draw_labels(ax: Any, data: BranchPlotData) -> None:
    for label in row_labels(data):
        ax.annotate(
            label.text,
            (label.x, label.y),
            xytext=(label.dx, 0),
            textcoords="offset points",
            va="center",
            fontsize=8 if label.bold else 7,
            fontweight="bold" if label.bold else "normal",
            color="0.35" if label.faded else "0.1",
        )


def _set_x_axis(columns: list[tuple[Any, Any]], data: BranchPlotData, axis: XAxis) -> None:
    """The x limits (and a broken axis's two ranges, ticks and break marks), the warm-up's
    label and, next to the fork, what the fork is."""
    main_tree = columns[-1][0]
    if axis.split is None:
        main_tree.set_xlim(axis.lo, axis.hi)
    else:
        split = axis.split
        (warm_tree, warm_curves), (trial_tree, trial_curves) = columns
        warm_tree.set_xlim(*split.warmup)
        trial_tree.set_xlim(*split.trials)
        warm_curves.set_xticks(split.warmup_ticks)
        trial_curves.set_xticks(split.trial_ticks)
        for ax in (warm_tree, warm_curves):
            ax.spines["right"].set_visible(False)
            ax.axvspan(*split.warmup, color="0.5", alpha=0.08, lw=0, zorder=0)
        for ax in (trial_tree, trial_curves):
            ax.spines["left"].set_visible(False)
            ax.tick_params(axis="y", left=False)
        for warm_ax, trial_ax in ((warm_tree, trial_tree), (warm_curves, trial_curves)):
            _break_marks(warm_ax, trial_ax)
    if data.trunk is None:
        return
    t = data.trunk
    note = f"\n(on its own scale, {axis.split.factor:.2g}× denser)" if axis.split else ""
    label = columns[0][0].annotate(
        f"warm-up, shared by all trials{note}",
        (t.x0, 0),
        xytext=(2, 6),
        textcoords="offset points",
        ha="left",
        va="bottom",
        fontsize=9,
    )
    label.set_in_layout(False)  # wider than a warm-up's axis: it must not push the next one
    columns[0][0].annotate(
        "fork: trials start\nfrom this checkpoint",
        (t.x1, 0),
        xytext=(-8, -10),
        textcoords="offset points",
        ha="right",
        va="top",
        fontsize=8,
        color="0.3",
    )


def _break_marks(left: Any, right: Any) -> None:
    """Two short diagonals on the bottom spines where the axis breaks: //"""
    marks = {"marker": [(-1, -2), (1, 2)], "markersize": 10, "linestyle": "none", "color": "k"}
    marks |= {"mec": "k", "mew": 1, "clip_on": False, "zorder": 10}
    left.plot([1], [0], transform=left.transAxes, **marks)
    right.plot([0], [0], transform=right.transAxes, **marks)


def _style_tree_axes(ax: Any, data: BranchPlotData, *, ylabel: bool) -> None:
    ax.set_ylim(*tree_y_limits(data))
    ax.set_yticks([])
    if ylabel and data.tree:
        ax.set_ylabel(
            "nodes of the fork tree\n(a child leaves its parent's row\n"
            "at the rung; winner's path on top)"
        )
    elif ylabel:
        ax.set_ylabel(
            "trials, one row each\n(completed by value, best on top;\nthen running, pruned, failed)"
        )
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


# -- bottom panel: objective curves ----------------------------------------------------------------


def _draw_curves(
    ax: Any, data: BranchPlotData, scale: ColorScale, size: Sizes, outline: list[Any]
) -> None:
    """Every trial's objective curve (pruned ones end in a cross in their colour), the best's
    outlined on top."""
    from matplotlib.collections import LineCollection

    lw = size.line_width
    lines, colors, pruned_ends = [], [], []
    for cv in data.curves:
        if cv.is_best or not cv.points:
            continue
        lines.append(cv.points)
        colors.append(scale.rgba(cv.color_value, cv.faded))
        if cv.marker == "pruned":
            pruned_ends.append((cv.points[-1], (*scale.rgba(cv.color_value)[:3], 0.8)))
    ax.add_collection(LineCollection(lines, colors=colors, linewidths=lw * 0.8, zorder=2))
    if pruned_ends:
        ax.scatter(
            [x for (x, _), _ in pruned_ends],
            [y for (_, y), _ in pruned_ends],
            marker="x",
            s=size.marker_size * 0.8,
            c=[c for _, c in pruned_ends],
            lw=1,
            zorder=3,
        )
    best_curve = next((cv for cv in data.curves if cv.is_best), None)
    if best_curve is not None and best_curve.points:
        ax.plot(  # in a fork tree, the winner's whole lineage
            *zip(*(data.winner_curve or best_curve.points), strict=True),
            color=scale.rgba(best_curve.color_value),
            lw=lw * 2 + 1,
            path_effects=outline,
            zorder=5,
        )


def _style_curves_axes(ax: Any, data: BranchPlotData, *, ylabel: bool, xlabel: bool) -> None:
    limits = curve_y_limits(data)
    if limits is not None:
        ax.set_ylim(*limits)
    if ylabel:
        ax.set_ylabel(data.metric)
    if xlabel:
        ax.set_xlabel(data.x_label)
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
