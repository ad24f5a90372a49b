"""The branch plot (SPEC section 7): its data, its layout, and drawing it.

Like `optuna.visualization`, computing and drawing are apart. `branch_plot_data` (in `data`) is a
pure function of a `StudyView` that returns plain dataclasses (every coordinate, colour value and
marker the figure shows; `chains` and `colors` are its pure parts), so tests assert on values
instead of pixels; `layout` turns that data into the figure's decisions (the x axis, with a break
that gives a long warm-up an axis of its own, sizes, the colour scale and its bar's ticks, row
labels, title); `draw_branch_plot` (in `draw`, with the colour bar and legend in `keys`: the only
modules that draw) applies them with matplotlib's Agg canvas, without touching the user's pyplot
backend::

    data = branch_plot_data(view, x="epochs")
    draw_branch_plot(data, "branches.png")
    # or both at once:
    plot_study(view, "branches.svg")

The figure: the warm-up is the trunk along y=0; each trial is a branch that leaves the trunk at
its fork point, fans out to a row of its own and runs to where it finished, was pruned, failed
or (while running) its latest checkpoint; colour is the objective; a second panel shows every
trial's objective curve against the same x axis.

A fork tree (a study of mode "tree", see `forktree`) is drawn as a tree on its side: each node
leaves its parent's row at the rung where it forked, a node's first child continues on its row,
so the winner's path is the top row, end to end; the generations lie between the rungs (dotted
lines, named along the top with their counts); survivors are wider with a dot where their
children fork, nodes ranked out at a rung quieter, pruned ones faded; labels go only where they
fit (`treelayout`): the winner's path and the best few finalists.

Imports flow one way (chains, colors → model → branches → forktree → data → layout →
treelayout → keys → drawtree → draw), and matplotlib is imported only inside functions, so
`import hpsearch.report.plot` does not load it.
"""

from hpsearch.report.plot.data import (
    CONNECTOR_FRACTION,
    X_AXES,
    Branch,
    BranchPlotData,
    Curve,
    Segment,
    branch_plot_data,
    format_param,
)
from hpsearch.report.plot.draw import PLOT_SUFFIXES, PlotFormatError, draw_branch_plot, plot_study
from hpsearch.report.plot.drawtree import DrawnLabels
from hpsearch.report.plot.layout import WARMUP_SHARE, default_title
from hpsearch.report.plot.model import Level

__all__ = [
    "CONNECTOR_FRACTION",
    "PLOT_SUFFIXES",
    "WARMUP_SHARE",
    "X_AXES",
    "Branch",
    "BranchPlotData",
    "Curve",
    "DrawnLabels",
    "Level",
    "PlotFormatError",
    "Segment",
    "branch_plot_data",
    "default_title",
    "draw_branch_plot",
    "format_param",
    "plot_study",
]
