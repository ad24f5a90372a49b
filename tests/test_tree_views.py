"""The fork tree in the report: the branch plot's data for a tree study, its labels, its
drawing at 200 nodes, and `status` / `tree` on a real Optuna study in sqlite (built by
`write_tree_study`, without the scheduler)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from hpsearch.cli import main
from hpsearch.lineage import CheckpointRow
from hpsearch.report.plot import BranchPlotData, branch_plot_data, draw_branch_plot
from hpsearch.report.plot.layout import FADED_ALPHA, tree_y_limits, x_axis
from hpsearch.report.plot.treelayout import (
    BEST_FEW,
    RANKED_OUT_ALPHA,
    Panel,
    alpha,
    level_ticks,
    note_box,
    overlap,
    tree_labels,
)
from hpsearch.report.status import final_at_end, study_view
from hpsearch.report.table import WIDTH, format_status_table
from hpsearch.report.tree import tree_text
from hpsearch.report.views import StudyView, TrialView
from hpsearch.search.session import Session
from hpsearch.testing import synthetic_study
from hpsearch.testing.synthetic import TREE_RUNGS, synthetic_tree, write_tree_study
from studyutil import write_study


@pytest.fixture(scope="module")
def view() -> StudyView:
    return synthetic_tree(50, seed=0)  # ~200 nodes over 4 generations


@pytest.fixture(scope="module")
def data(view: StudyView) -> BranchPlotData:
    return branch_plot_data(view)


def xlim(data: BranchPlotData) -> tuple[float, float]:
    axis = x_axis(data)
    return axis.lo, axis.hi


def node(view: StudyView, number: int) -> TrialView:
    return next(t for t in view.trials if t.number == number)


# --- the plot's data ----------------------------------------------------------------------------


def test_each_node_leaves_its_parents_row_where_the_parent_ended(data: BranchPlotData) -> None:
    by_number = {b.number: b for b in data.branches}
    assert data.tree and data.trunk is None and len(data.branches) > 190
    for b in data.branches:
        first = b.segments[0]
        if b.parent is None:  # a root: from scratch, on its own row
            assert (b.generation, b.x0, first.x0, first.y0) == (0, 0.0, 0.0, b.y)
            continue
        parent = by_number[b.parent]
        assert b.generation == parent.generation + 1
        assert (first.x0, first.y0) == (parent.x1, parent.y)  # the fork point
        assert b.x0 == TREE_RUNGS[b.generation - 1]
        assert b.y <= parent.y  # children hang under their parent
        for a, c in itertools.pairwise(b.segments):
            assert (a.x1, a.y1) == pytest.approx((c.x0, c.y0))


def test_generations_are_levels_between_the_rungs(view: StudyView, data: BranchPlotData) -> None:
    assert [(lv.generation, lv.x0, lv.x1) for lv in data.levels] == [
        (0, 0.0, 1.0), (1, 1.0, 2.0), (2, 2.0, 4.0), (3, 4.0, 8.0)
    ]  # fmt: skip
    nodes = [t for t in view.trials if t.retry_of is None]
    for lv in data.levels:
        mine = [b for b in data.branches if b.generation == lv.generation]
        assert lv.nodes == len(mine) == sum(t.generation == lv.generation for t in nodes)
        assert lv.survivors == sum(b.survivor for b in mine)
        assert lv.pruned == sum(b.state == "PRUNED" for b in mine)
        assert all(lv.x0 <= b.x0 and b.x1 <= lv.x1 for b in mine)
    assert [lv.survivors for lv in data.levels] == [13, 13, 13, 0]  # a quarter of 50, 52, 52
    ticks = level_ticks(data, 750.0, xlim(data))
    assert ticks.boundaries == (1.0, 2.0, 4.0)
    assert ticks.labels[0] == "gen 0\n50 nodes\n13 kept"
    assert ticks.labels[-1] == "gen 3\n52 nodes\n34 finished"
    narrow = level_ticks(data, 200.0, xlim(data))  # a first generation too narrow
    assert narrow.labels[:2] == ("g0", "g1")


def test_survivors_are_the_nodes_children_fork_from(data: BranchPlotData) -> None:
    parents = {b.parent for b in data.branches}
    decided = {lv.generation for lv in data.levels if lv.survivors}
    for b in data.branches:
        assert b.survivor == (b.number in parents)
        ranked_out = b.state == "COMPLETE" and not b.survivor and b.generation in decided
        assert b.ranked_out == ranked_out
    assert sum(b.ranked_out for b in data.branches) > 30


def test_pruned_children_are_faded_ranked_out_ones_quieter(data: BranchPlotData) -> None:
    pruned = [b for b in data.branches if b.state == "PRUNED"]
    assert len(pruned) > 60 and all(b.faded and b.marker == "pruned" for b in pruned)
    assert {alpha(b) for b in pruned} == {FADED_ALPHA}
    assert {alpha(b) for b in data.branches if b.ranked_out} == {RANKED_OUT_ALPHA}
    assert {alpha(b) for b in data.branches if b.survivor or b.on_path} == {1.0}


def test_the_winners_path_is_the_top_row_from_root_to_winner(
    view: StudyView, data: BranchPlotData
) -> None:
    best = view.best()
    deepest = [t for t in view.trials if t.generation == 3 and t.state == "COMPLETE"]
    assert best is not None and best.value == max(t.value for t in deepest)
    path = data.winner_path
    assert path[-1] == best.number == data.best_number and len(path) == 4
    for child, parent in itertools.pairwise(reversed(path)):
        assert node(view, child).parent_trial == parent
    on_path = [b for b in data.branches if b.on_path]
    assert sorted(b.number for b in on_path) == sorted(path)
    assert {b.y for b in on_path} == {-1.0}  # one straight line on top
    segs = data.best_path
    assert (segs[0].x0, segs[0].y0, segs[-1].x1, segs[-1].y1) == (0.0, -1.0, 8.0, -1.0)
    for a, c in itertools.pairwise(segs):
        assert (a.x1, a.y1) == pytest.approx((c.x0, c.y0))
    xs = [x for x, _ in data.winner_curve]
    assert xs == sorted(set(xs)) and xs[0] == 0.25 and xs[-1] == 8.0
    assert data.best_text.splitlines()[1] == "lineage " + " → ".join(f"#{n}" for n in path)
    assert data.best_text.splitlines()[2].startswith("lr: ")  # the schedule it followed


def test_rows_a_first_child_continues_its_parents_row_subtrees_stay_together(
    data: BranchPlotData,
) -> None:
    leaves = [b for b in data.branches if not b.survivor]
    rows = sorted({-b.y for b in data.branches})
    assert data.n_rows == len(leaves) == len(rows) and rows == list(range(1, data.n_rows + 1))
    for y in {b.y for b in data.branches}:  # a row is one lineage: spans follow each other
        spans = sorted((b.x0, b.x1) for b in data.branches if b.y == y)
        assert all(a[1] <= c[0] for a, c in itertools.pairwise(spans))
    kids: dict[int | None, list[float]] = {}
    for b in data.branches:
        kids.setdefault(b.parent, []).append(b.y)
    by_number = {b.number: b for b in data.branches}

    def subtree_rows(n: int) -> set[float]:
        return {by_number[n].y}.union(*(subtree_rows(c.number) for c in data.branches
                                        if c.parent == n))  # fmt: skip

    for b in data.branches:
        if b.survivor:  # its subtree takes consecutive rows, starting at its own
            got = sorted(-y for y in subtree_rows(b.number))
            assert got == list(range(int(-b.y), int(-b.y) + len(got)))
    assert tree_y_limits(data)[0] == -(data.n_rows + 1)


def test_a_childs_curve_starts_at_its_parents_last_point(data: BranchPlotData) -> None:
    curves = {c.number: c for c in data.curves}
    by_number = {b.number: b for b in data.branches}
    for b in data.branches:
        if b.parent is not None and curves[b.number].points:
            assert curves[b.number].points[0] == curves[b.parent].points[-1]
            assert curves[b.number].points[1][0] > by_number[b.parent].x1


def test_colours_span_the_deepest_generation(data: BranchPlotData) -> None:
    finals = [b.value for b in data.branches if b.generation == 3 and b.state == "COMPLETE"]
    assert (data.vmin, data.vmax) == (min(finals), max(finals))
    assert data.n_below > 100  # earlier generations and pruned nodes: ranked below them


def test_labels_are_the_path_and_the_best_few_and_never_overlap(data: BranchPlotData) -> None:
    panel = Panel(750.0, 280.0, xlim(data), tree_y_limits(data))
    labels = tree_labels(data, panel)
    numbers = [label.number for label in labels]
    assert numbers[: len(data.winner_path)] == list(data.winner_path)
    assert len(data.winner_path) < len(labels) <= len(data.winner_path) + BEST_FEW
    boxes = [label.box for label in labels] + [note_box(data, panel)]
    for a, c in itertools.combinations(boxes, 2):
        assert not overlap(a, c)
    inside = [b[0] >= 0 and b[2] <= panel.width and b[1] >= 0 and b[3] <= panel.height
              for b in boxes]  # fmt: skip
    assert all(inside)
    finalists = [b for b in data.branches if b.number in numbers and not b.on_path]
    assert all(b.generation == 3 and b.state == "COMPLETE" for b in finalists)
    short = tree_labels(data, Panel(750.0, 120.0, panel.xlim, panel.ylim))  # less room
    assert len(short) < len(labels)


def test_200_nodes_render_to_a_png_whose_labels_do_not_overlap(
    data: BranchPlotData, tmp_path: Path
) -> None:
    import matplotlib.image

    path = tmp_path / "tree.png"
    drawn = draw_branch_plot(data, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[:2] == (8 * 120, 12 * 120)
    assert drawn is not None and len(drawn.labels) > len(data.winner_path)
    boxes = [*drawn.labels, drawn.note]
    for a, c in itertools.combinations(boxes, 2):  # as drawn, not as estimated
        assert not overlap(a, c)
    for a, c in itertools.pairwise(drawn.levels):
        assert a[2] < c[0]
    p = drawn.panel
    assert all(b[0] >= 0 and b[2] <= p.width and b[1] >= 0 and b[3] <= p.height for b in boxes)
    assert all(b[1] >= p.height for b in drawn.levels)  # above the panel


def test_other_studies_keep_their_plot() -> None:
    for view in (synthetic_study(40, seed=1), synthetic_study(30, seed=1, classic=True)):
        data = branch_plot_data(view)
        assert not data.tree and data.levels == () and data.winner_path == ()
        assert data.n_rows == len(data.branches)
        assert [-b.y for b in data.branches] == list(range(1, len(data.branches) + 1))
        assert all(b.generation is None and not b.survivor for b in data.branches)


def test_a_missing_parent_or_a_loop_makes_a_root() -> None:
    def t(number: int, parent: int | None, gen: int) -> TrialView:
        value = 0.5 + number / 100
        return TrialView(number, "COMPLETE", value, {"lr": 0.1}, None, None, float(gen),
                         gen + 1.0, 1, 1, parent_trial=parent, generation=gen)  # fmt: skip

    # 5 crashed; its retry 6 names the attempt as where it started (no tree parent recorded)
    crashed = replace(t(5, 0, 1), state="FAIL", value=None)
    retry = replace(t(6, 5, 1), retry_of=5, generation=None)
    trials = (t(0, None, 0), t(1, 0, 1), t(2, 99, 1), t(3, 4, 1), t(4, 3, 2), crashed, retry)
    view = StudyView("odd", "acc", "maximize", False, 10, 0.0, 0, trials=trials, tree=True)
    data = branch_plot_data(view)
    assert sorted(b.number for b in data.branches) == [0, 1, 2, 3, 4, 6]
    again = data.branch(5)  # the retry's branch, forked from #0 like its attempt
    assert (again.number, again.parent, again.generation) == (6, 0, 1)
    parents = {b.number: b.parent for b in data.branches}
    assert parents[0] is None and parents[1] == 0 and parents[2] is None
    assert [parents[3], parents[4]].count(None) == 1  # the loop is cut once
    # the winner: the best value (one rule, `hpsearch.search.winner`), whatever its generation
    assert data.winner_path[-1] == 6 and data.best_number == 6


# --- a real study in sqlite: study_view, status, tree ---------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, StudyView, str]:
    """A small tree recorded in a real Optuna study (sqlite) with its checkpoint rows, and the
    same tree in a second study of that database whose nodes count their evaluation indices
    from their fork (not from scratch)."""
    tmp = tmp_path_factory.mktemp("tree")
    db = f"sqlite:///{tmp}/study.db"
    tree = {"roots": 4, "rungs": [0.25, 0.5, 1.0], "keep": 0.5, "children": 2,
            "hparams": {"weight_decay": 1e-4, "hidden": 64}}  # fmt: skip  # the synthetic shape
    paths = [write_study(tmp, name=name, storage=db, warmup=None, tree=tree,
                         trials={"epochs": 4, "eval_every": 0.25})
             for name in ("tree", "tree-rel")]  # fmt: skip
    made = synthetic_tree(4, seed=2, children=2, keep=0.5, rungs=(1.0, 2.0, 4.0))
    for path, name in zip(paths, ("tree", "tree-rel"), strict=True):
        optuna.create_study(study_name=name, storage=db, direction="maximize")
        session = Session.open(path, create=False)
        try:
            write_tree_study(made, session.study, session.lineage, global_index=name == "tree")
        finally:
            session.close()
    return paths[0], made, paths[1]


@pytest.mark.parametrize("study", [0, 2], ids=["global-index", "index-from-fork"])
def test_the_view_reads_the_tree_back(stored: tuple[str, StudyView, str], study: int) -> None:
    path, made = stored[study], stored[1]
    session = Session.open(path, create=False)
    try:
        view = study_view(session)
    finally:
        session.close()
    assert view.tree and len(view.trials) == len(made.trials) > 10

    def facts(t: TrialView) -> tuple:
        return (t.number, t.state, t.generation, t.parent_trial, t.child, t.retry_of,
                t.fork_progress, t.end_progress, t.intermediate)  # fmt: skip

    assert [facts(t) for t in view.trials] == [facts(t) for t in made.trials]
    assert view.best().number == made.best().number
    assert branch_plot_data(view).winner_path == branch_plot_data(made).winner_path


def test_status_shows_gen_and_parent_within_its_width(
    stored: tuple[str, StudyView, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, made, _ = stored
    assert main(["status", path]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:4] == ["#", "state", "value", "gen"] and "parent" in header
    assert max(map(len, lines)) <= WIDTH
    best = made.best()
    child = next(
        t for t in made.trials if t.generation == 2 and t.state == "COMPLETE" and t is not best
    )
    row = next(line.split() for line in lines if line.split()[:1] == [str(child.number)])
    assert row[3] == "2" and f"#{child.parent_trial}" in row
    root = next(line.split() for line in lines if line.split()[:1] == ["0"])
    assert root[3] == "0"
    lineage = " → ".join(f"#{n}" for n in made.lineage(made.best().number))
    assert f"winner's lineage: {lineage}" in out
    assert "fork tree, 3 generations: gen 0 4 nodes (2 kept), gen 1 4 nodes (2 kept)" in out
    plain = format_status_table(synthetic_study(10, seed=0))
    assert "gen" not in plain.splitlines()[0].split()


def test_tree_nests_each_node_under_its_parent_trial(
    stored: tuple[str, StudyView, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, made, _ = stored
    assert main(["tree", path]) == 0
    lines = capsys.readouterr().out.splitlines()

    def header(t: TrialView) -> tuple[int, str]:
        line = next(s for s in lines if s.strip().startswith(f"trial {t.number} (gen"))
        return len(line) - len(line.lstrip()), line.strip()

    winner = made.best()
    depths = [header(node(made, n))[0] for n in made.lineage(winner.number)]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)  # each one level in
    text = header(winner)[1]
    assert text.startswith(f"trial {winner.number} (gen 2, from #{winner.parent_trial}) COMPLETE")
    assert header(node(made, 0))[1].startswith("trial 0 (gen 0) COMPLETE")


def test_tree_puts_a_node_whose_fork_point_has_no_row_under_its_parent() -> None:
    def row(id_: str, trial: int, parent: str | None, step: int) -> CheckpointRow:
        return CheckpointRow(id_, "s", trial, None, "trial", parent, step, step, step / 10, 10,
                             "committed", float(step), float(step))  # fmt: skip

    rows = [row("a", 0, None, 10), row("b", 0, "a", 20), row("c", 1, "gone", 30)]
    trials = {0: ("COMPLETE", 0.5), 1: ("COMPLETE", 0.7)}
    text = tree_text("s", rows, trials, nodes={0: (0, None), 1: (1, 0)})
    lines = text.splitlines()
    assert lines[1] == "  trial 0 (gen 0) COMPLETE 0.5:"
    assert lines[-2] == "      trial 1 (gen 1, from #0) COMPLETE 0.7:"  # under #0's last row
    flat = tree_text("s", rows, trials)
    assert "  trial 1 COMPLETE 0.7:" in flat.splitlines()  # without the tree: at the top


def test_the_final_report_lies_at_the_trials_end_not_past_it() -> None:
    """1438 samples an epoch, an evaluation every 0.25 (360 samples): the 4th lands at 1440,
    past the 1438 a one-epoch trial trained, and the plot dropped the trial's final value."""
    points = [(k * 360 / 1438, k / 4) for k in range(1, 5)]
    moved = final_at_end(points, 1.0, 360 / 1438)
    assert moved[-1] == (1.0, 1.0) and moved[:-1] == tuple(points[:-1])
    assert final_at_end(points, 0.6, 360 / 1438) == tuple(points)  # far past: left as it is
    assert final_at_end(points, None, 1.0) == tuple(points)
