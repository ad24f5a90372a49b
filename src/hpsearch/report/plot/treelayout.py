"""A fork tree's layout: how each node is drawn, the generations' ticks, and which labels fit.

Pure, like `layout`: labels are placed in points on a `Panel` (the tree axes' size, which
`draw` measures once the figure is laid out), each with the box its text takes, estimated
from the font size; a label is kept only where its box overlaps no kept one and stays inside
the panel. At 200 nodes that keeps the winner's path and the best few finalists readable
instead of a pile of numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpsearch.report.plot.layout import FADED_ALPHA, LABEL_OFFSET
from hpsearch.report.plot.model import Branch, BranchPlotData

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in points from the panel's lower left

RANKED_OUT_ALPHA = 0.55  # finished its generation, not kept at the rung: there, but quieter
SURVIVOR_WIDTH = 1.8  # times the line width: the lineages that went on
LABEL_FONT = 7.0
NOTE_FONT = 8.0
BEST_FEW = 8  # finalists labelled besides the winner, where they fit
# Average advance of a character as a share of the font size, and the height of a line: a
# little over DejaVu Sans's (digits and '#' are 0.64 em; lines 1.2 em), so an estimated box
# holds the drawn text.
CHAR_WIDTH = 0.68
LINE_HEIGHT = 1.3
GAP = 1.5  # points kept free between two boxes
NOTE_OFFSET = (-6.0, 18.0)  # the best note's corner from the winner's star: above path labels
NOTE_PAD = 0.35  # of the note's font size, inside its frame
PATH_CLEARANCE = 6.0  # points from the top row to a path label: clear of the path's outline


def alpha(b: Branch) -> float:
    if b.faded:
        return FADED_ALPHA
    return RANKED_OUT_ALPHA if b.ranked_out else 1.0


def width(b: Branch, line_width: float) -> float:
    return line_width * SURVIVOR_WIDTH if b.survivor else line_width


@dataclass(frozen=True)
class Panel:
    """The tree axes: their size in points and their data limits."""

    width: float
    height: float
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    def point(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        return (x - x0) / (x1 - x0) * self.width, (y - y0) / (y1 - y0) * self.height


def text_size(text: str, fontsize: float) -> tuple[float, float]:
    lines = text.split("\n")
    return max(map(len, lines)) * fontsize * CHAR_WIDTH, len(lines) * fontsize * LINE_HEIGHT


@dataclass(frozen=True)
class TreeLabel:
    """A label at (x, y) in data units, moved (dx, dy) points, aligned `ha`/`va` there;
    `box` is the room its text takes on the panel (points)."""

    number: int
    text: str
    x: float
    y: float
    dx: float
    dy: float
    ha: str
    va: str
    bold: bool
    faded: bool
    box: Box


def _box(px: float, py: float, w: float, h: float, ha: str, va: str) -> Box:
    x0 = px - w / 2 if ha == "center" else px - w if ha == "right" else px
    y0 = py - h / 2 if va == "center" else py - h if va == "top" else py
    return (x0, y0, x0 + w, y0 + h)


def overlap(a: Box, b: Box, gap: float = 0.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def note_box(data: BranchPlotData, panel: Panel) -> Box | None:
    """Where the best note's frame goes: right-aligned left of the winner's star, above it."""
    best = next((b for b in data.branches if b.is_best), None)
    if best is None or data.best_text is None:
        return None
    px, py = panel.point(best.x1, best.y)
    w, h = text_size(data.best_text, NOTE_FONT)
    pad = 2 * NOTE_PAD * NOTE_FONT
    return _box(px + NOTE_OFFSET[0], py + NOTE_OFFSET[1], w + pad, h + pad, "right", "bottom")


def tree_labels(data: BranchPlotData, panel: Panel) -> list[TreeLabel]:
    """The labels that fit, in order: the winner (bold, right of its star), each ancestor on
    its path (above its stretch of the top row), then the best finalists at their ends."""
    by_number = {b.number: b for b in data.branches}
    wanted: list[tuple[Branch, str]] = []
    for n in data.winner_path:
        wanted.append((by_number[n], "end" if by_number[n].is_best else "above"))
    if not data.winner_path:
        wanted += [(b, "end") for b in data.branches if b.is_best]
    deepest = max((b.generation or 0 for b in data.branches), default=0)
    sign = -1.0 if data.direction == "maximize" else 1.0
    finalists = sorted(
        (
            b
            for b in data.branches
            if b.state == "COMPLETE" and b.value is not None
            and (b.generation or 0) == deepest and not b.is_best
        ),
        key=lambda b: sign * (b.value or 0.0),
    )  # fmt: skip
    wanted += [(b, "end") for b in finalists[:BEST_FEW]]
    placed: list[TreeLabel] = []
    taken = [box] if (box := note_box(data, panel)) is not None else []
    for b, where in wanted:
        label = _label(b, where, panel)
        if all(not overlap(label.box, t, GAP) for t in taken) and _inside(label.box, panel):
            placed.append(label)
            taken.append(label.box)
    return placed


def _label(b: Branch, where: str, panel: Panel) -> TreeLabel:
    text = f"#{b.number}"
    size = LABEL_FONT + (1 if b.is_best else 0)
    w, h = text_size(text, size)
    if where == "above":
        x, dx, dy, ha, va = (b.x0 + b.x1) / 2, 0.0, PATH_CLEARANCE, "center", "bottom"
    else:
        x, dx, dy, ha, va = b.x1, LABEL_OFFSET, 0.0, "left", "center"
    px, py = panel.point(x, b.y)
    box = _box(px + dx, py + dy, w, h, ha, va)
    return TreeLabel(b.number, text, x, b.y, dx, dy, ha, va, b.is_best, b.faded, box)


def _inside(box: Box, panel: Panel) -> bool:
    return box[0] >= 0 and box[1] >= 0 and box[2] <= panel.width and box[3] <= panel.height


@dataclass(frozen=True)
class LevelTicks:
    """The generations along the tree panel's top: a tick at every rung boundary, and at each
    generation's middle its name and counts (shortened, then left out, where it is narrow)."""

    boundaries: tuple[float, ...]
    centers: tuple[float, ...]
    labels: tuple[str, ...]


def level_ticks(data: BranchPlotData, panel_width: float, xlim: tuple[float, float]) -> LevelTicks:
    scale = panel_width / ((xlim[1] - xlim[0]) or 1.0)
    centers, labels = [], []
    for lv in data.levels:
        room = (lv.x1 - lv.x0) * scale
        long = f"gen {lv.generation}\n{lv.nodes} nodes\n{lv.survivors} kept"
        if lv.survivors == 0:
            long = f"gen {lv.generation}\n{lv.nodes} nodes\n{lv.complete} finished"
        short = f"g{lv.generation}"
        for text in (long, short, ""):
            if text_size(text, LABEL_FONT)[0] + 2 * GAP <= room:
                break
        centers.append((lv.x0 + lv.x1) / 2)
        labels.append(text)
    boundaries = tuple(lv.x0 for lv in data.levels if lv.generation > 0)
    return LevelTicks(boundaries, tuple(centers), tuple(labels))
