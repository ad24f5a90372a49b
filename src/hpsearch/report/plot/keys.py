"""The branch plot's keys: the colour bar and the legend (drawn by `hpsearch.report.plot.draw`).

matplotlib is imported inside the functions, like everywhere in the plot.
"""

from __future__ import annotations

from typing import Any

from hpsearch.report.plot.data import BranchPlotData
from hpsearch.report.plot.layout import ColorScale, colorbar_ticks

TRUNK_COLOR = "0.15"
FAIL_COLOR = "#d62728"


def draw_colorbar(fig: Any, axes: list[Any], data: BranchPlotData) -> None:
    """The bar over the colour map's positions, ticked with values; a ranked part for values
    worse than every finished trial is marked off and says so."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=matplotlib.colormaps[data.cmap])
    cbar = fig.colorbar(sm, ax=axes, shrink=0.9, pad=0.01, aspect=40)
    ticks = colorbar_ticks(data)
    cbar.set_ticks(ticks.positions, labels=ticks.labels)
    cbar.set_label(f"{data.metric} (final value; pruned: last reported)   better →")
    if ticks.below_from is not None:
        cbar.ax.axhline(ticks.below_from, color="white", lw=2)
        middle = (
            ticks.below_from / 2 if data.direction == "maximize" else (1 + ticks.below_from) / 2
        )
        cbar.ax.text(
            0.5, middle, ticks.below_text, transform=cbar.ax.get_yaxis_transform(), rotation=90,
            ha="center", va="center", fontsize=6.5, color="white",
        )  # fmt: skip
    if data.direction != "maximize":
        cbar.ax.invert_yaxis()  # better is always up


_LEGEND_MARKS: dict[str, dict[str, Any]] = {
    "complete": {"marker": "o", "ms": 6, "color": "0.4", "label": "completed"},
    "pruned": {"marker": "x", "ms": 7, "mew": 1.5, "color": "0.4", "label": "pruned (faded)"},
    "failed": {"marker": "D", "ms": 6, "mec": "black", "color": FAIL_COLOR, "label": "failed"},
    "running": {"marker": ">", "ms": 8, "mec": "black", "color": "0.4", "label": "running"},
}


def draw_legend(
    fig: Any, data: BranchPlotData, has_best: bool, scale: ColorScale, outline: list[Any]
) -> None:
    """One entry per kind of thing the figure shows, below both panels."""
    from matplotlib.lines import Line2D

    proxy_c = scale.best_color()
    kinds = {b.marker for b in data.branches if not b.is_best}
    handles = []
    if data.trunk is not None:
        handles.append(Line2D([], [], color=TRUNK_COLOR, lw=4, label="warm-up (trunk)"))
    path, star = ("winner's path", "winner") if data.tree else ("best trial's path", "best")
    if has_best:
        handles += [
            Line2D([], [], color=proxy_c, lw=3, path_effects=outline, label=path),
            Line2D([], [], color=proxy_c, marker="*", ms=13, mec="black", ls="", label=star),
        ]
    if data.tree:
        handles += _tree_handles(data)
    handles += [Line2D([], [], ls="", **_LEGEND_MARKS[k]) for k in _LEGEND_MARKS if k in kinds]
    if any(b.resumes for b in data.branches):
        label = "resumed after a crash"
        handles.append(
            Line2D([], [], color="black", marker="|", ms=10, mew=1.5, ls="", label=label)
        )
    if handles:
        ncols = len(handles)
        if data.tree and ncols > 7:  # a tree has more kinds: two rows, or they run off the page
            ncols = (ncols + 1) // 2
        fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=9)


def _tree_handles(data: BranchPlotData) -> list[Any]:
    """A fork tree's own entries: survivors (where children fork), ranked-out nodes, rungs."""
    from matplotlib.lines import Line2D

    from hpsearch.report.plot.drawtree import RUNG_COLOR
    from hpsearch.report.plot.treelayout import RANKED_OUT_ALPHA

    out = []
    if any(b.survivor for b in data.branches):
        out.append(
            Line2D([], [], color="0.4", lw=2.5, marker="o", ms=6, mec="black", mew=0.6,
                   label="survivor (forks at its end)")
        )  # fmt: skip
    if any(b.ranked_out for b in data.branches):
        out.append(Line2D([], [], color="0.4", alpha=RANKED_OUT_ALPHA, lw=1.2, label="ranked out"))
    if len(data.levels) > 1:
        out.append(Line2D([], [], color=RUNG_COLOR, lw=0.9, ls=":", label="rung"))
    return out
