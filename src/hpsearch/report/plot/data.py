"""The branch plot's data (SPEC section 7): a pure function of a `StudyView`, no matplotlib.

`branch_plot_data` returns plain dataclasses with every coordinate (in data units: x is training
progress, y is the branch's row), colour value and marker the figure shows, so tests assert on
values instead of pixels; `hpsearch.report.plot.layout` turns them into the figure's axes, sizes,
colours and labels, and `hpsearch.report.plot.draw` draws them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hpsearch.report.plot.branches import end_of, make_branch, row_key
from hpsearch.report.plot.chains import chain_points, group_chains
from hpsearch.report.plot.colors import color_range, color_stops, interpolate
from hpsearch.report.plot.forktree import levels, tree_rows
from hpsearch.report.plot.model import (
    CONNECTOR_FRACTION,
    X_AXES,
    Branch,
    BranchPlotData,
    Curve,
    Point,
    Segment,
)
from hpsearch.report.views import StudyView, TrialView

__all__ = ["CONNECTOR_FRACTION", "X_AXES", "Branch", "BranchPlotData", "Curve", "Segment"]


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
    chains, not_drawn = group_chains(view.trials)
    best = view.best()
    best_number = best.number if best is not None else None
    trunk = None
    if not view.classic and view.warmup_progress > 0:
        trunk = Segment(0.0, 0.0, view.warmup_progress * scale, 0.0, None)
    branches, curves, n_rows, winner_path = _laid_out(
        view, chains, scale, best_number, trunk=trunk is not None
    )
    best_path: tuple[Segment, ...] = ()
    best_text = None
    if best is not None:
        best_branch = next(b for b in branches if b.is_best)
        on_path = [b for n in winner_path for b in branches if b.number == n] or [best_branch]
        best_path = ((trunk,) if trunk is not None else ()) + tuple(
            s for b in on_path for s in b.segments
        )
        best_text = _best_text(view, best, best_branch, winner_path)
    vmin, vmax = color_range([(_range_state(view, b), b.color_value) for b in branches])
    stops, n_below = color_stops((b.color_value for b in branches), vmin, vmax, maximize)
    branches, curves = _place_colors(branches, curves, stops)
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
        branches=branches,
        best_number=best_number,
        best_value=best.value if best is not None else None,
        best_path=best_path,
        best_text=best_text,
        curves=curves,
        warmup_curve=tuple((p * scale, v) for p, v in view.warmup_curve),
        vmin=vmin,
        vmax=vmax,
        cmap="viridis" if maximize else "viridis_r",
        counts=counts,
        n_trials=len(view.trials),
        not_drawn=not_drawn,
        color_stops=stops,
        n_below=n_below,
        tree=view.tree,
        levels=levels(branches) if view.tree else (),
        winner_path=winner_path,
        n_rows=n_rows,
        winner_curve=_lineage_curve(curves, winner_path),
    )


def _lineage_curve(curves: tuple[Curve, ...], path: tuple[int, ...]) -> tuple[Point, ...]:
    """The curves of the path's nodes, one after the other, each x once."""
    by_number = {c.number: c for c in curves}
    points: list[Point] = []
    for n in path:
        points += [p for p in by_number[n].points if not points or p[0] > points[-1][0]]
    return tuple(points)


def _laid_out(
    view: StudyView, chains: list[list[TrialView]], scale: float, best: int | None, *, trunk: bool
) -> tuple[tuple[Branch, ...], tuple[Curve, ...], int, tuple[int, ...]]:
    """The branches in row order and their curves, the number of rows and (in a fork tree)
    the winner's path: one row per branch, or a fork tree's rows (`forktree`)."""
    maximize = view.direction == "maximize"
    connector = _connector(chains, scale, view.tree)
    if not view.tree:
        branches, curves = _rows(chains, maximize, scale, connector, best)
        return branches, curves, len(branches), ()
    branches, curves, f = tree_rows(chains, maximize, scale, connector, best, trunk=trunk)
    return branches, curves, f.rows, tuple(chains[i][-1].number for i in f.path)


def _range_state(view: StudyView, b: Branch) -> str:
    """The state a branch counts as for the colour range: in a fork tree only the deepest
    generation's COMPLETE nodes finished their budget; the rest were measured earlier in
    training, like pruned trials, and are ranked below them."""
    if view.tree and b.state == "COMPLETE":
        done = [t.generation for t in view.trials if t.state == "COMPLETE" and t.generation]
        if b.generation != max(done, default=0):
            return "PRUNED"
    return b.state


def _connector(chains: list[list[TrialView]], scale: float, tree: bool) -> float:
    """CONNECTOR_FRACTION of the trials' span (first fork to last end); in a fork tree at most
    a quarter of the shortest finished node (the first rungs are short: a connector as long as
    a whole generation hid where its nodes trained)."""
    if not chains:
        return 0.0
    ends = [end_of(c[-1]) for c in chains]
    starts = [c[0].fork_progress for c in chains]
    connector = CONNECTOR_FRACTION * (max(ends) - min(starts))
    done = [end_of(c[-1]) - c[0].fork_progress for c in chains if c[-1].state == "COMPLETE"]
    if tree and done:
        connector = min(connector, 0.25 * min(done))
    return connector * scale


def _rows(
    chains: list[list[TrialView]],
    maximize: bool,
    scale: float,
    connector: float,
    best_number: int | None,
) -> tuple[tuple[Branch, ...], tuple[Curve, ...]]:
    """The branches in row order (row 1 right under the trunk), each with its objective curve."""
    order = sorted(range(len(chains)), key=lambda i: row_key(chains[i], maximize))
    branches: list[Branch] = []
    curves: list[Curve] = []
    for row, i in enumerate(order, start=1):
        chain = chains[i]
        branch = make_branch(chain, -float(row), scale, connector, best_number)
        branches.append(branch)
        curves.append(
            Curve(
                number=branch.number,
                state=branch.state,
                points=chain_points(chain, scale, branch.x1),
                color_value=branch.color_value,
                faded=branch.faded,
                marker=branch.marker,
                is_best=branch.is_best,
            )
        )
    return tuple(branches), tuple(curves)


def _place_colors(
    branches: tuple[Branch, ...], curves: tuple[Curve, ...], stops: tuple[Point, ...]
) -> tuple[tuple[Branch, ...], tuple[Curve, ...]]:
    """Each branch and curve with its colour's position on the map (see `color_stops`)."""
    return (
        tuple(replace(b, color_position=interpolate(stops, b.color_value)) for b in branches),
        tuple(replace(c, color_position=interpolate(stops, c.color_value)) for c in curves),
    )


def format_param(value: Any) -> str:
    """A parameter value in 3 significant digits (ints, strings and bools as they are)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.3g}"


def _best_text(view: StudyView, best: TrialView, branch: Branch, path: tuple[int, ...] = ()) -> str:
    """The best trial's value and params; in a fork tree also its lineage, and each param that
    changed along it as the schedule it followed (its recipe)."""
    head = f"best: trial #{best.number}  {view.metric} = {best.value:.4g}"
    crashed = [n for n in branch.attempts if n != best.number]
    if crashed:
        head += f"  (resumed after crash of {', '.join(f'#{n}' for n in crashed)})"
    fixed = dict(best.params)
    if len(path) > 1:
        by_number = {t.number: t for t in view.trials}
        nodes = [by_number[n] for n in path]
        head += "\nlineage " + " → ".join(f"#{n}" for n in path)
        for key in best.params:
            values = [format_param(t.params.get(key)) for t in nodes]
            if len(set(values)) > 1:
                head += f"\n{key}: " + " → ".join(values)
                del fixed[key]  # shown as its schedule
    params = ", ".join(f"{k}={format_param(v)}" for k, v in fixed.items())
    return head + (f"\n{params}" if params else "")
