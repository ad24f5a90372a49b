"""The branch plot (SPEC section 7); the module moved into a package, split in the next commit."""

from hpsearch.report.plot.data import (
    CONNECTOR_FRACTION,
    PLOT_SUFFIXES,
    X_AXES,
    Branch,
    BranchPlotData,
    Curve,
    PlotFormatError,
    Segment,
    branch_plot_data,
    default_title,
    draw_branch_plot,
    format_param,
    plot_study,
)

__all__ = [
    "CONNECTOR_FRACTION",
    "PLOT_SUFFIXES",
    "X_AXES",
    "Branch",
    "BranchPlotData",
    "Curve",
    "PlotFormatError",
    "Segment",
    "branch_plot_data",
    "default_title",
    "draw_branch_plot",
    "format_param",
    "plot_study",
]
