"""The branch plot: its data asserted by value, its files checked by format and size."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import pytest

from hpsearch.errors import UsageError
from hpsearch.report.plot import (
    CONNECTOR_FRACTION,
    BranchPlotData,
    branch_plot_data,
    draw_branch_plot,
    format_param,
    plot_study,
)
from hpsearch.report.plot.colors import BELOW_SHARE
from hpsearch.report.plot.layout import (
    FADED_ALPHA,
    LABEL_OFFSET,
    NEUTRAL,
    WARMUP_SHARE,
    ColorScale,
    axis_break,
    colorbar_ticks,
    curve_y_limits,
    row_labels,
    sizes,
    tree_y_limits,
    x_axis,
)
from hpsearch.report.views import StudyView, TrialView
from hpsearch.testing import synthetic_study


def curve(start: float, end: float, v0: float, v1: float, n: int = 4) -> tuple:
    """n evenly spaced reports from just after `start` to `end`, objective from v0 to v1."""
    step = (end - start) / n
    return tuple((start + step * (i + 1), v0 + (v1 - v0) * (i + 1) / n) for i in range(n))


def trial(number: int, state: str, value: float | None, **kw) -> TrialView:
    base = {
        "params": {"lr": 1e-3 * (number + 1), "dropout": 0.1},
        "parent_checkpoint": "ckpt/warmup/step-200",
        "fork_step": 200,
        "fork_progress": 2.0,
        "end_progress": 4.0,
        "steps_trained": 200,
        "samples_trained": 2000,
    }
    base.update(kw)
    return TrialView(number=number, state=state, value=value, **base)


@pytest.fixture
def view() -> StudyView:
    """Complete, pruned, failed-then-continued, failed, running and waiting trials."""
    trials = (
        trial(0, "COMPLETE", 0.90, intermediate=curve(2, 4, 0.7, 0.90)),
        trial(
            1,
            "PRUNED",
            0.60,
            end_progress=2.5,
            pruned_at=2.5,
            intermediate=curve(2, 2.5, 0.6, 0.6, 1),
        ),
        trial(
            2,
            "FAIL",
            None,
            end_progress=3.2,
            intermediate=curve(2, 3, 0.7, 0.8, 2),
            fail_reason="OOM",
        ),
        trial(
            3,
            "COMPLETE",
            0.95,
            retry_of=2,
            parent_checkpoint="ckpt/t2/step-300",
            fork_progress=3.0,
            intermediate=curve(3, 4, 0.85, 0.95, 2),
            params={"lr": 3e-3, "dropout": 0.123456},
        ),
        trial(4, "RUNNING", None, end_progress=3.5, intermediate=curve(2, 3.5, 0.7, 0.8, 3)),
        trial(5, "COMPLETE", 0.85, intermediate=curve(2, 4, 0.7, 0.85)),
        trial(6, "FAIL", None, end_progress=2.2, fail_reason="NaN loss"),
        trial(7, "WAITING", None, fork_progress=0.0, end_progress=None, steps_trained=0),
    )
    return StudyView(
        name="digits-mlp",
        metric="val_accuracy",
        direction="maximize",
        classic=False,
        samples_per_epoch=1000,
        warmup_progress=2.0,
        warmup_steps=200,
        warmup_curve=curve(0, 2, 0.3, 0.7, 4),
        base_checkpoint="ckpt/warmup/step-200",
        trials=trials,
    )


def drawn_numbers(data: BranchPlotData) -> list[int]:
    return sorted(
        [b.number for b in data.branches] + [n for b in data.branches for n in b.attempts]
    )


# --- the data -------------------------------------------------------------------------------------


def test_every_trial_drawn_once_and_failed_attempts_folded(view: StudyView) -> None:
    data = branch_plot_data(view)
    assert drawn_numbers(data) == [0, 1, 2, 3, 4, 5, 6]
    assert data.not_drawn == (7,)
    assert [b.number for b in data.branches] == [3, 0, 5, 4, 1, 6]  # complete by value, ...
    assert [b.y for b in data.branches] == [-1, -2, -3, -4, -5, -6]
    chain = data.branch(2)
    assert chain.number == 3 and chain.attempts == (2,) and chain.resumes == (3.0,)
    assert data.branch(3) is chain
    assert chain.label == "#3 (resumes #2)"
    assert len(data.curves) == len(data.branches)
    assert sorted(c.number for c in data.curves) == sorted(b.number for b in data.branches)


def test_fork_and_end_points_markers_and_fading(view: StudyView) -> None:
    data = branch_plot_data(view)
    got = {b.number: (b.x0, b.x1, b.marker, b.faded, b.state) for b in data.branches}
    assert got == {
        0: (2.0, 4.0, "complete", False, "COMPLETE"),
        1: (2.0, 2.5, "pruned", True, "PRUNED"),
        3: (2.0, 4.0, "complete", False, "COMPLETE"),  # forks where its first attempt did
        4: (2.0, 3.5, "running", False, "RUNNING"),
        5: (2.0, 4.0, "complete", False, "COMPLETE"),
        6: (2.0, 2.2, "failed", True, "FAIL"),
    }
    assert data.trunk is not None
    assert (data.trunk.x0, data.trunk.y0, data.trunk.x1, data.trunk.y1) == (0.0, 0.0, 2.0, 0.0)
    for b in data.branches:  # every branch starts on the trunk and ends on its row at x1
        first, last = b.segments[0], b.segments[-1]
        assert (first.x0, first.y0) == (b.x0, 0.0)
        assert (last.x1, last.y1) == pytest.approx((b.x1, b.y))
        for a, c in zip(b.segments, b.segments[1:], strict=False):  # connected
            assert (a.x1, a.y1) == pytest.approx((c.x0, c.y0))


def test_best_path_runs_from_trunk_start_through_fork_to_best_end(view: StudyView) -> None:
    data = branch_plot_data(view)
    assert data.best_number == 3 and data.best_value == 0.95
    assert [b.number for b in data.branches if b.is_best] == [3]
    path = data.best_path
    assert (path[0].x0, path[0].y0, path[0].trial) == (0.0, 0.0, None)
    assert (path[0].x1, path[0].y1) == (2.0, 0.0)  # the fork
    assert (path[1].x0, path[1].y0) == (2.0, 0.0)
    assert (path[-1].x1, path[-1].y1) == (4.0, -1.0)
    # the crashed attempt trains up to the continuation's fork, the continuation the rest
    assert [s.trial for s in path] == [None, 2, 2, 3]
    connector = CONNECTOR_FRACTION * (4.0 - 2.0)  # of the trials' span: first fork to last end
    assert (path[1].x1, path[1].y1) == pytest.approx((2.0 + connector, -1.0))
    assert (path[2].x1, path[3].x0) == (3.0, 3.0)
    assert data.best_text.startswith("best: trial #3  val_accuracy = 0.95")
    assert "lr=0.003, dropout=0.123" in data.best_text


def test_colour_range_and_values(view: StudyView) -> None:
    data = branch_plot_data(view)
    assert (data.vmin, data.vmax) == (0.85, 0.95)  # the finished trials' values
    assert data.cmap == "viridis"
    values = {b.number: b.color_value for b in data.branches}
    assert values == {0: 0.90, 1: 0.60, 3: 0.95, 4: None, 5: 0.85, 6: None}
    assert data.counts == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 2, "RUNNING": 1, "WAITING": 1}


def test_curves_chain_attempts_and_keep_warmup(view: StudyView) -> None:
    data = branch_plot_data(view)
    best = next(c for c in data.curves if c.is_best)
    assert best.number == 3
    assert [p[0] for p in best.points] == [2.5, 3.0, 3.5, 4.0]  # attempt #2 up to 3.0, then #3
    assert data.warmup_curve == view.warmup_curve
    pruned = next(c for c in data.curves if c.number == 1)
    assert pruned.faded and pruned.marker == "pruned" and pruned.points == ((2.5, 0.6),)


def test_a_retry_draws_the_values_it_shares_with_its_attempt_once() -> None:
    """A retry carries the reports of the attempt it continues (and recomputes the one the
    attempt made after its last checkpoint): its curve ran back over them, drawn twice."""
    attempt = trial(0, "FAIL", None, end_progress=3.2, intermediate=curve(2, 4, 0.7, 0.9)[:3])
    retry = trial(
        1,
        "COMPLETE",
        0.9,
        retry_of=0,
        fork_progress=2.5,  # its attempt's last checkpoint, before the report at 3.0
        intermediate=curve(2, 4, 0.7, 0.9),  # 2.5 and 3.0 shared with the attempt
    )
    view = StudyView("r", "acc", "maximize", False, 10, 2.0, 20, trials=(attempt, retry))
    data = branch_plot_data(view)
    (cv,) = data.curves
    assert cv.points == ((2.5, 0.75), (3.0, 0.8), (3.5, 0.85), (4.0, 0.9))
    assert cv.points[-1][0] == data.branch(1).x1 == 4.0


def test_every_curve_stops_at_its_trials_end_and_x_only_increases() -> None:
    # a report past the branch's end (a stale last report, or one placed from the wrong start)
    late = trial(
        0, "PRUNED", 0.6, end_progress=3.0, pruned_at=3.0, intermediate=curve(2, 3.5, 0.6, 0.7, 3)
    )
    view = StudyView("r", "acc", "maximize", False, 10, 2.0, 20, trials=(late,))
    (cv,) = branch_plot_data(view).curves
    assert [x for x, _ in cv.points] == [2.5, 3.0]
    for n in (40, 200):
        data = branch_plot_data(synthetic_study(n, seed=0, budget=6.0))
        for c in data.curves:
            xs = [x for x, _ in c.points]
            assert xs == sorted(set(xs)), c.number  # each x once, in order
            assert not xs or xs[-1] <= data.branch(c.number).x1
        chains = [b for b in data.branches if b.attempts]
        assert chains and all(
            len(next(c for c in data.curves if c.number == b.number).points) == 8
            for b in chains
            if b.state == "COMPLETE"
        )


def test_row_labels_put_every_label_on_its_own_row_the_best_too(view: StudyView) -> None:
    """The best had no label of its own, and its star sat beside the next row's label."""
    data = branch_plot_data(view)
    labels = row_labels(data)
    rows = {b.number: b for b in data.branches}
    assert len(labels) == len(data.branches)
    for label in labels:
        b = rows[label.number]
        assert (label.x, label.y, label.text, label.faded) == (b.x1, b.y, b.label, b.faded)
        assert label.dx == LABEL_OFFSET  # all clear of the star (about 8 points wide each side)
    best = next(label for label in labels if label.bold)
    assert (best.number, best.text, best.y) == (3, "#3 (resumes #2)", -1.0)
    assert [label.bold for label in labels].count(True) == 1
    assert LABEL_OFFSET > (260**0.5) / 2  # the star's half-width, in points


def test_samples_axis_scales_every_x(view: StudyView) -> None:
    e, s = branch_plot_data(view), branch_plot_data(view, x="samples")
    assert s.x_label.endswith("(samples)") and e.x_label.endswith("(epochs)")
    assert s.trunk.x1 == 2000.0
    for be, bs in zip(e.branches, s.branches, strict=True):
        assert (bs.x0, bs.x1, bs.y) == pytest.approx((be.x0 * 1000, be.x1 * 1000, be.y))
        assert bs.resumes == pytest.approx(tuple(r * 1000 for r in be.resumes))
        for se, ss in zip(be.segments, bs.segments, strict=True):
            assert (ss.x0, ss.x1, ss.y1) == pytest.approx((se.x0 * 1000, se.x1 * 1000, se.y1))
    for ce, cs in zip(e.curves, s.curves, strict=True):
        assert [p[0] for p in cs.points] == pytest.approx([p[0] * 1000 for p in ce.points])
        assert [p[1] for p in cs.points] == [p[1] for p in ce.points]
    assert s.warmup_curve[-1] == (2000.0, 0.7)
    with pytest.raises(ValueError, match="x must be one of epochs, samples, but got x='steps'"):
        branch_plot_data(view, x="steps")


def test_minimize_reverses_colours_and_order() -> None:
    view = synthetic_study(40, seed=3, direction="minimize")
    data = branch_plot_data(view)
    assert data.cmap == "viridis_r"
    complete = [b.value for b in data.branches if b.state == "COMPLETE"]
    assert complete == sorted(complete)
    assert data.branches[0].is_best and data.branches[0].value == view.best().value
    assert data.vmin == min(complete) and data.vmax == max(complete)


def test_classic_mode_has_no_trunk_and_forks_at_zero() -> None:
    data = branch_plot_data(synthetic_study(30, seed=1, classic=True))
    assert data.trunk is None
    assert data.best_path[0].x0 == 0.0 and data.best_path[0].y0 == 0.0
    roots = [b for b in data.branches if not b.attempts]
    assert all(b.x0 == 0.0 for b in roots)


def test_pruned_branches_are_ordered_by_where_they_stopped() -> None:
    data = branch_plot_data(synthetic_study(200, seed=0))
    pruned = [b for b in data.branches if b.state == "PRUNED"]
    assert pruned and [b.x1 for b in pruned] == sorted((b.x1 for b in pruned), reverse=True)
    assert all(b.faded and b.marker == "pruned" for b in pruned)


def test_empty_study() -> None:
    view = StudyView("empty", "loss", "minimize", False, 100, 1.0, 10)
    data = branch_plot_data(view)
    assert data.branches == () and data.best_path == () and data.best_number is None
    assert (data.vmin, data.vmax) == (0.0, 1.0)


def test_odd_chains_still_draw_every_trial_once() -> None:
    """Two crashes in a row, a crash before any checkpoint, a retry of an unknown trial, and two
    trials that both claim to continue the same attempt."""
    trials = (
        trial(0, "FAIL", None, end_progress=2.6),
        trial(1, "FAIL", None, retry_of=0, fork_progress=2.5, end_progress=3.1),
        trial(2, "COMPLETE", 0.0, retry_of=1, fork_progress=3.0),  # a value of 0 still counts
        trial(3, "FAIL", None, end_progress=2.0),  # crashed before its first checkpoint
        trial(4, "PRUNED", 0.5, retry_of=3, fork_progress=2.0, end_progress=3.0),
        trial(5, "COMPLETE", 0.7, retry_of=99),  # continues a trial that is not in the view
        trial(6, "FAIL", None, end_progress=3.0),
        trial(7, "COMPLETE", 0.8, retry_of=6, fork_progress=2.5),
        trial(8, "COMPLETE", 0.6, retry_of=6, fork_progress=2.5),  # a second claim on #6
    )
    view = StudyView("odd", "loss", "minimize", False, 10, 2.0, 20, trials=trials)
    data = branch_plot_data(view)
    assert drawn_numbers(data) == list(range(9))
    assert data.branch(0).number == 2 and data.branch(0).attempts == (0, 1)
    assert data.branch(2).resumes == (2.5, 3.0)
    assert [s.trial for s in data.branch(2).segments] == [0, 0, 1, 2]
    assert data.branch(3).number == 4 and data.branch(4).resumes == (2.0,)
    assert {s.trial for s in data.branch(4).segments} == {4}  # #3 trained nothing
    assert data.branch(6).number == 7 and data.branch(8).attempts == ()
    assert data.best_number == 2 and data.branches[0].number == 2
    assert (data.vmin, data.vmax) == (0.0, 0.8)


def test_computing_the_data_does_not_import_matplotlib() -> None:
    code = (
        "import sys; from hpsearch.report.plot import branch_plot_data; "
        "from hpsearch.report.views import StudyView; "
        "branch_plot_data(StudyView('s', 'loss', 'minimize', False, 10, 1.0, 10)); "
        "assert 'matplotlib' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_format_param() -> None:
    assert [format_param(v) for v in (0.000123456, 64, "adam", True, 0.5)] == [
        "0.000123",
        "64",
        "adam",
        "True",
        "0.5",
    ]


# --- the files ----------------------------------------------------------------------------------


def test_layout_breaks_the_axis_after_a_long_warmup(view: StudyView) -> None:
    """A compressed stretch of one axis read as linear at a glance: the warm-up gets an axis of
    its own, each part linear with its own ticks, and a break between them."""
    # warm-up 0..2, trials 2..4: half the range, so it gets a quarter of the width, 3x denser
    axis = x_axis(branch_plot_data(view))
    split = axis.split
    assert split is not None
    assert split.widths == (WARMUP_SHARE, 1 - WARMUP_SHARE) and split.factor == pytest.approx(3.0)
    assert split.warmup == pytest.approx((-0.04, 2.0))  # ends at the fork
    assert split.trials == pytest.approx((2.0 - 0.03, 4.0 + 0.09 * 2.0))  # shows the fork too
    assert (axis.lo, axis.hi) == (split.warmup[0], split.trials[1])
    assert split.warmup_ticks == (0.0, 1.0, 2.0)
    assert split.trial_ticks[0] == 2.0 and split.trial_ticks[-1] == 4.0
    assert list(split.trial_ticks) == sorted(split.trial_ticks)
    # the quickstart's shape: a 6-epoch warm-up, 6 epochs a trial
    quick = x_axis(branch_plot_data(synthetic_study(40, seed=0, budget=6.0))).split
    assert quick is not None and quick.warmup[1] == 6.0 and quick.factor == pytest.approx(3.0)
    assert quick.warmup_ticks == (0.0, 2.0, 4.0, 6.0) and quick.trial_ticks[-1] == 12.0


def test_layout_keeps_a_short_warmup_and_classic_linear() -> None:
    assert axis_break(0.0, 1.0, 4.0, 0.09) is None  # a quarter of the range: drawn as it is
    assert axis_break(0.0, 0.0, 4.0, 0.09) is None
    axis = x_axis(branch_plot_data(synthetic_study(30, seed=4, classic=True)))
    assert axis.split is None
    assert (axis.lo, axis.hi) == pytest.approx((-0.02, 2.0 + 0.09 * 2.0))


def test_layout_sizes_labels_and_limits_follow_the_rows(view: StudyView) -> None:
    data = branch_plot_data(view)
    assert (sizes(data).line_width, sizes(data).marker_size) == (2.0, 40.0)
    assert [label.number for label in row_labels(data)] == [b.number for b in data.branches]
    assert tree_y_limits(data) == (-(len(data.branches) + 1), 3.0)
    assert curve_y_limits(data) == pytest.approx((0.4 - 0.0275, 0.95 + 0.0275))
    many = branch_plot_data(synthetic_study(200, seed=1))
    rows = len(many.branches)  # fewer than 200: continuations share their attempt's row
    assert 100 < rows < 200
    assert (sizes(many).line_width, sizes(many).marker_size) == (0.6, 2400.0 / rows)
    # so many labels would be unreadable: only the best's
    assert [label.number for label in row_labels(many)] == [many.best_number]
    assert tree_y_limits(many) == (-(rows + 1), pytest.approx(0.14 * rows))


def test_colour_scale_clips_greys_and_fades(view: StudyView) -> None:
    import matplotlib

    data = branch_plot_data(view)  # maximize: vmin 0.85, vmax 0.95
    scale = ColorScale(data)
    top = matplotlib.colormaps["viridis"](1.0)
    assert scale.rgba(0.95) == pytest.approx(top) and scale.rgba(7.0) == pytest.approx(top)
    assert scale.rgba(None) == NEUTRAL
    assert scale.rgba(0.95, faded=True)[3] == FADED_ALPHA
    assert scale.best_color() == pytest.approx(top)
    bottom = matplotlib.colormaps["viridis"](0.0)
    assert scale.rgba(0.60) == pytest.approx(bottom)  # the one value below the range: the end
    assert scale.rgba(0.85) == pytest.approx(matplotlib.colormaps["viridis"](BELOW_SHARE))


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_values_below_the_finished_range_each_get_a_colour_by_rank(direction: str) -> None:
    """Pruned trials measured early are worse than every finished one: clipped to the range's
    end, they all had the same dark colour."""
    data = branch_plot_data(synthetic_study(200, seed=0, direction=direction))
    maximize = direction == "maximize"
    done = [b for b in data.branches if b.state == "COMPLETE"]
    worse = [
        b
        for b in data.branches
        if b.color_value is not None
        and (b.color_value < data.vmin if maximize else b.color_value > data.vmax)
    ]
    assert len(worse) > 40 and {b.state for b in worse} <= {"PRUNED", "RUNNING"}
    assert data.n_below == len(worse)
    # the finished trials keep the good part of the map, linear in their values
    span = (BELOW_SHARE, 1.0) if maximize else (0.0, 1.0 - BELOW_SHARE)
    for b in done:
        frac = (b.color_value - data.vmin) / (data.vmax - data.vmin)
        assert b.color_position == pytest.approx(span[0] + frac * (span[1] - span[0]))
    best = next(b for b in data.branches if b.is_best)
    assert best.color_position == (1.0 if maximize else 0.0)
    # the worse ones share the rest, in the order of their values, each a step of its own
    ranked = sorted(worse, key=lambda b: b.color_value, reverse=not maximize)  # worst first
    positions = [b.color_position for b in ranked]
    assert positions == sorted(positions, reverse=not maximize)
    distinct = sorted({b.color_value: b.color_position for b in ranked}.values())
    n = len({b.color_value for b in worse})
    assert len(distinct) == n > 40  # a colour per distinct value, evenly spaced by rank
    steps = [c - a for a, c in itertools.pairwise(distinct)]
    assert steps == pytest.approx([BELOW_SHARE / n] * (n - 1))
    assert positions[0] == (0.0 if maximize else 1.0)
    assert all((p < BELOW_SHARE) if maximize else (p > 1.0 - BELOW_SHARE) for p in positions)
    curves = {c.number: c.color_position for c in data.curves}
    assert all(curves[b.number] == b.color_position for b in data.branches)
    # the colour bar says so: its ticks run over the map, and the ranked part is marked off
    ticks = colorbar_ticks(data)
    assert list(ticks.positions) == sorted(ticks.positions) and len(ticks.labels) >= 4
    assert ticks.below_from == (BELOW_SHARE if maximize else 1.0 - BELOW_SHARE)
    assert ticks.below_text == f"{data.n_below} worse than all finished, by rank"
    worst = ranked[0].color_value
    assert f"{worst:.3g}" in ticks.labels


def test_colour_bar_without_values_below_the_range(view: StudyView) -> None:
    trials = tuple(t for t in view.trials if t.number != 1)  # the one pruned trial
    data = branch_plot_data(StudyView(**{**view.__dict__, "trials": trials}))
    assert data.n_below == 0 and data.color_stops == ((0.85, 0.0), (0.95, 1.0))
    ticks = colorbar_ticks(data)
    assert ticks.below_from is None and ticks.below_text == ""


def check_file(path: Path) -> None:
    suffix = path.suffix
    if suffix == ".png":
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(path).shape[:2] == (8 * 120, 12 * 120)
    elif suffix == ".svg":
        assert ET.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    else:
        assert path.read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_writes_each_format(view: StudyView, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"plot{suffix}"
    plot_study(view, path)
    check_file(path)


def test_200_trials_png_and_svg(tmp_path: Path) -> None:
    view = synthetic_study(200, seed=0)
    data = branch_plot_data(view)
    assert drawn_numbers(data) == [t.number for t in view.trials]
    for suffix in (".png", ".svg"):
        draw_branch_plot(data, tmp_path / f"big{suffix}")
        check_file(tmp_path / f"big{suffix}")


def test_empty_study_draws(tmp_path: Path) -> None:
    plot_study(StudyView("empty", "loss", "minimize", False, 100, 1.0, 10), tmp_path / "e.png")
    check_file(tmp_path / "e.png")


def test_bad_suffix_is_a_value_error_naming_the_allowed_ones(
    view: StudyView, tmp_path: Path
) -> None:
    data = branch_plot_data(view)
    for bad in ("plot.jpg", "plot"):
        with pytest.raises(ValueError, match=r"\.png, \.svg, \.pdf") as err:
            draw_branch_plot(data, tmp_path / bad)
        assert isinstance(err.value, UsageError)
    assert list(tmp_path.iterdir()) == []


def test_drawing_leaves_the_pyplot_backend_alone(view: StudyView, tmp_path: Path) -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules
    backend = matplotlib.rcParams._get_backend_or_none()
    plot_study(view, tmp_path / "p.png")
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    assert matplotlib.rcParams._get_backend_or_none() == backend


def test_colour_stops_interpolate_and_clip() -> None:
    from hpsearch.report.plot.colors import color_stops, interpolate

    stops, worse = color_stops([0.1, 0.5, 0.5, 0.8, 0.9, None], 0.8, 0.9, maximize=True)
    assert worse == 3  # trials, not values: 0.5 twice
    assert stops == ((0.1, 0.0), (0.5, BELOW_SHARE / 2), (0.8, BELOW_SHARE), (0.9, 1.0))
    got = [interpolate(stops, v) for v in (-1.0, 0.1, 0.3, 0.85, 0.9, 2.0, None, math.nan)]
    mid = BELOW_SHARE / 4
    assert got == pytest.approx([0.0, 0.0, mid, (BELOW_SHARE + 1) / 2, 1.0, 1.0, None, None])
    stops, worse = color_stops([0.1, 0.2, 0.5, 0.9], 0.1, 0.2, maximize=False)
    assert worse == 2 and stops == ((0.1, 0.0), (0.2, 0.7), (0.5, 0.85), (0.9, 1.0))
