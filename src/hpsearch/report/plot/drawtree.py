"""Drawing what only a fork tree has: its rungs, its generations' ticks, its survivors' fork
points and the labels that fit (decided by `hpsearch.report.plot.treelayout`).

Called by `hpsearch.report.plot.draw`; matplotlib is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpsearch.report.plot.model import BranchPlotData
from hpsearch.report.plot.treelayout import LABEL_FONT, Box, Panel, level_ticks, tree_labels

RUNG_COLOR = "0.45"


@dataclass(frozen=True)
class DrawnLabels:
    """What the figure's texts took once drawn, in points from the tree panel's lower left:
    the row labels, the best note's frame and the generations' names (for tests: none may
    overlap another)."""

    panel: Panel
    labels: tuple[Box, ...]
    note: Box | None
    levels: tuple[Box, ...]


def draw_rungs(columns: list[tuple[Any, Any]], data: BranchPlotData) -> None:
    """A dotted line at every rung boundary, across both panels."""
    for lv in data.levels:
        if lv.generation == 0:
            continue
        for ax in columns[-1]:
            ax.axvline(lv.x0, color=RUNG_COLOR, lw=0.9, ls=":", zorder=1)


def draw_level_ticks(ax: Any, data: BranchPlotData, panel_width: float) -> Any:
    """The generations along the top of the tree panel: names at their middles, ticks at the
    rungs. Returns the secondary axis."""
    top = ax.secondary_xaxis("top")
    ticks = level_ticks(data, panel_width, ax.get_xlim())
    top.set_xticks(ticks.centers, labels=ticks.labels)
    top.set_xticks(ticks.boundaries, minor=True)
    top.tick_params(which="major", length=0, labelsize=LABEL_FONT, pad=2)
    top.tick_params(which="minor", length=8, width=0.9, color=RUNG_COLOR)
    top.spines["top"].set_visible(False)
    return top


def panel_of(fig: Any, ax: Any) -> Panel:
    """The axes' size in points, as laid out now."""
    box = ax.get_window_extent(fig.canvas.get_renderer())
    k = 72.0 / fig.dpi
    return Panel(box.width * k, box.height * k, ax.get_xlim(), ax.get_ylim())


def draw_tree_labels(ax: Any, data: BranchPlotData, panel: Panel) -> list[Any]:
    """The labels that fit on `panel`; kept out of the layout, which is already decided."""
    artists = []
    for label in tree_labels(data, panel):
        a = ax.annotate(
            label.text,
            (label.x, label.y),
            xytext=(label.dx, label.dy),
            textcoords="offset points",
            ha=label.ha,
            va=label.va,
            fontsize=LABEL_FONT + (1 if label.bold else 0),
            fontweight="bold" if label.bold else "normal",
            color="0.35" if label.faded else "0.1",
            zorder=9,
        )
        a.set_in_layout(False)
        artists.append(a)
    return artists


def measure(fig: Any, ax: Any, labels: list[Any], note: Any | None, top: Any | None) -> DrawnLabels:
    """The drawn extents of the labels, the note's frame and the generations' names."""
    renderer = fig.canvas.get_renderer()
    origin = ax.get_window_extent(renderer)
    k = 72.0 / fig.dpi

    def box(extent: Any) -> Box:
        return (
            (extent.x0 - origin.x0) * k, (extent.y0 - origin.y0) * k,
            (extent.x1 - origin.x0) * k, (extent.y1 - origin.y0) * k,
        )  # fmt: skip

    names = [t for t in top.get_xticklabels() if t.get_text()] if top is not None else []
    return DrawnLabels(
        panel=panel_of(fig, ax),
        labels=tuple(box(a.get_window_extent(renderer)) for a in labels),
        note=box(note.get_bbox_patch().get_window_extent(renderer)) if note is not None else None,
        levels=tuple(box(t.get_window_extent(renderer)) for t in names),
    )
