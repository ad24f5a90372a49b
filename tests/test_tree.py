"""The fork tree: its plan (pure), its study-file section, and real tree studies on a tiny task:
the shape, GC, a replay bitwise equal to the winner, the probe, and two workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.config import TreeSettings, generation_sizes, load_study_file
from hpsearch.errors import StudyFileError
from hpsearch.search.jobs import Job
from hpsearch.search.progress import StudyProgress
from hpsearch.search.pruning import FORK_GRACE
from hpsearch.search.records import PREFIX, trial_attr
from hpsearch.search.replay import recipe, replay, winner
from hpsearch.search.restore import Restorer
from hpsearch.search.runner import run_study
from hpsearch.search.scheduler.tree import Tree
from hpsearch.search.scheduler.tree_plan import TreePlan
from hpsearch.search.session import Session
from hpsearch.search.trial import TrialRunner
from hpsearch.testing.conformance.scheduler import close_context, run_context, tiny_study
from hpsearch.training import Schedule
from studyutil import deadline

TREE = TreeSettings(roots=4, rungs=(0.25, 0.5, 1.0), keep=0.5, children=2, probe=0.0, hparams={})


# -- the plan, on synthetic trials ----------------------------------------------------------


def node(
    number: int, g: int, parent: int | None, child: int, value: float | None,
    state: TrialState = TrialState.COMPLETE, **attrs: Any,
) -> optuna.trial.FrozenTrial:  # fmt: skip
    user = {PREFIX + k: v for k, v in attrs.items()}
    user |= {PREFIX + "generation": g, PREFIX + "parent_trial": parent, PREFIX + "child": child,
             PREFIX + "final_checkpoint": f"ck-{number}"}  # fmt: skip
    t = create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1.0)}, user_attrs=user,
    )  # fmt: skip
    t.number = number
    return t


def slot_of(t: optuna.trial.FrozenTrial) -> tuple[Any, Any, Any] | None:
    """A trial's place in the tree as recorded (None: it holds none)."""
    if trial_attr(t, "generation") is None:
        return None
    return (trial_attr(t, "generation"), trial_attr(t, "parent_trial"), trial_attr(t, "child"))


def test_the_plan_fills_the_roots_then_waits_for_the_generation_then_forks_the_best() -> None:
    roots = [node(i, 0, None, i, v) for i, v in enumerate([0.5, 0.9, 0.7, 0.1])]
    running = node(4, 0, None, 3, None, TrialState.RUNNING)
    plan = TreePlan([*roots[:2]], TREE, "maximize", retries=1)
    assert plan.next().slot == (0, None, 2)
    plan = TreePlan([*roots[:3], running], TREE, "maximize", retries=1)
    assert plan.next().wait  # generation 0 is full but not settled
    assert plan.protected() == {"ck-1", "ck-2"}  # the two that may still survive
    plan = TreePlan(roots, TREE, "maximize", retries=1)
    assert [t.number for t in plan.survivors(0)] == [1, 2]  # the best half, best first
    nxt = plan.next()
    assert nxt.slot == (1, 1, 0) and nxt.parent is not None and nxt.parent.number == 1
    assert plan.protected() == {"ck-1", "ck-2"}  # the survivors, until their children settle


def test_a_retry_fills_its_failed_nodes_slot_and_a_pruned_node_never_survives() -> None:
    trials = [
        node(0, 0, None, 0, 0.5),
        node(1, 0, None, 1, None, TrialState.FAIL, fail_kind="error"),
        node(2, 0, None, 2, None, TrialState.PRUNED),
        node(3, 0, None, 3, 0.2),
        node(4, 0, None, 1, 0.9, retry_of=1),  # the retry of trial 1, in its slot
    ]
    plan = TreePlan(trials, TREE, "maximize", retries=1)
    assert plan.is_settled(0)
    assert [t.number for t in plan.survivors(0)] == [4, 0]
    assert plan.next().slot == (1, 4, 0)
    # the failed node with a retry still to come keeps the generation open
    plan = TreePlan(trials[:4], TREE, "maximize", retries=1)
    assert not plan.is_settled(0) and plan.next().wait


def test_a_grown_tree_needs_nothing_and_pins_nothing() -> None:
    trials, number = [], 0
    for g, parents in ((0, [None] * 4), (1, [3, 3, 2, 2]), (2, [7, 7, 6, 6])):
        for i, p in enumerate(parents):
            trials.append(node(number, g, p, i if g == 0 else i % 2, float(number)))
            number += 1
    plan = TreePlan(trials, TREE, "maximize", retries=1)
    assert plan.size() == sum(generation_sizes(TREE)) == 12
    assert plan.next().slot is None and not plan.next().wait
    assert plan.protected() == set()


def test_a_generation_with_too_many_pruned_shrinks_the_tree_it_plans() -> None:
    """Survivors are complete nodes only: a generation with 1 complete node of 4 has 1
    survivor, so the next one has 2 children, not 4; progress counts against this size."""
    trials = [node(i, 0, None, i, 0.5 + i / 10) for i in range(4)]  # survivors 3 and 2
    for i, parent in enumerate([3, 3, 2, 2]):
        state = TrialState.COMPLETE if i == 0 else TrialState.PRUNED
        trials.append(node(4 + i, 1, parent, i % 2, 0.9 if i == 0 else None, state))
    plan = TreePlan(trials, TREE, "maximize", retries=1)
    assert [t.number for t in plan.survivors(1)] == [4]
    assert plan.size() == 4 + 4 + 2 < sum(generation_sizes(TREE))
    assert plan.next().slot == (2, 4, 0)


def test_wsd_holds_the_lr_then_decays_over_the_last_fraction() -> None:
    s = Schedule("wsd", warmup=0.1, final=0.0, decay=0.2)
    assert [round(s.factor(p), 6) for p in (0.05, 0.1, 0.5, 0.8, 0.9, 1.0)] == [
        0.5, 1.0, 1.0, 1.0, 0.5, 0.0,
    ]  # fmt: skip


# -- the study file --------------------------------------------------------------------------


def _doc(tmp_path: Path) -> dict[str, Any]:
    with open(tiny_study(tmp_path, tree=True)) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize(
    "change, key, words",
    [
        (lambda d: d.update(warmup={"epochs": 1, "hparams": {"lr": 0.1, "batch_size": 8}}),
         "warmup", "not both"),
        (lambda d: d["trials"].update(n=5), "trials.n", "tree.roots"),
        (lambda d: d["tree"].update(rungs=[0.5, 0.25, 1.0]), "tree.rungs", "increase"),
        (lambda d: d["tree"].update(rungs=[0.5]), "tree.rungs", "must end at 1.0"),
        (lambda d: d["tree"]["hparams"].update(lr=0.1), "tree.hparams.lr", "sampled"),
        (lambda d: d.update(schedule=None) or d["tree"].update(probe=0.1), "tree.probe",
         "schedule"),
        (lambda d: d.update(schedule={"name": "cosine", "decay": 0.2}), "schedule.decay",
         "only the wsd"),
    ],
)  # fmt: skip
def test_tree_study_file_mistakes_name_the_key(
    tmp_path: Path, change: Any, key: str, words: str
) -> None:
    doc = _doc(tmp_path)
    change(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(StudyFileError) as err:
        load_study_file(path)
    assert f": {key}: " in str(err.value) and words in str(err.value)


# -- real tree studies on the tiny task ---------------------------------------------------


def _tree_file(tmp_path: Path, **tree: Any) -> str:
    doc = _doc(tmp_path)
    doc["tree"].update({"roots": 4, "rungs": [0.25, 0.5, 1.0], "keep": 0.5, "children": 2})
    doc["tree"].update(tree)
    doc["trials"] = {"epochs": 2, "eval_every": 0.25}
    doc["search_space"]["weight_decay"] = {"float": [1e-5, 1e-2], "log": True}
    doc["search_space"]["hidden"] = {"categorical": [8, 16]}  # the roots' builds differ
    doc["checkpoints"]["keep_best"] = 1
    path = tmp_path / "tree.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_a_tree_study_grows_its_shape_and_its_winner_replays_bit_for_bit(
    tmp_path: Path,
) -> None:
    path = _tree_file(tmp_path)
    run_study(path)
    session = Session.open(path, create=False)
    try:
        trials = session.study.get_trials(deepcopy=False)
        gens = [trial_attr(t, "generation") for t in trials]
        assert [gens.count(g) for g in range(3)] == [4, 4, 4]
        by = {t.number: t for t in trials}
        for t in trials:
            parent = trial_attr(t, "parent_trial")
            if parent is None:
                assert trial_attr(t, "parent_checkpoint") is None
                assert trial_attr(t, "generation") == 0
                continue
            p = by[parent]
            assert trial_attr(p, "generation") == trial_attr(t, "generation") - 1
            assert trial_attr(t, "parent_checkpoint") == trial_attr(p, "final_checkpoint")
            assert trial_attr(t, "fork_samples") == round(
                [0.25, 0.5][trial_attr(p, "generation")] * 512
            )
            if trial_attr(t, "child") == 0:  # the child that continues
                assert t.params == p.params
            assert t.params["hidden"] == p.params["hidden"]  # not forkable: inherited
            # reports at the index since scratch: a child's steps come after its parent's
            assert min(t.intermediate_values) > max(p.intermediate_values)
        # nodes of both builds ran on one reused trainer: no node found its parent unusable
        assert {t.params["hidden"] for t in trials} == {8, 16}
        assert all(t.state != TrialState.FAIL for t in trials)
        # GC: of the finals, only the winner's (keep_best 1) survives a grown tree
        live = [r for r in session.lineage.checkpoints() if r.status == "committed"]
        best = winner(session)
        assert best is not None and trial_attr(best, "generation") == 2
        assert {r.id for r in live if r.kind == "final"} == {trial_attr(best, "final_checkpoint")}
        segments = recipe(session, best.number)
        assert [s.end for s in segments] == [128, 256, 512]
        _, result = replay(session, best.number, say=lambda _: None)
        assert result.compared > 0 and result.differs == []
        assert result.metrics["val_loss"] == best.value
    finally:
        session.close()


def test_a_node_enqueued_by_a_worker_that_died_before_asking_is_asked_once(
    tmp_path: Path,
) -> None:
    """A node is enqueued with its place in the tree, then asked for; a worker killed between
    the two leaves a waiting trial that names its slot: the next ask takes it, so the slot is
    filled once and no trial is left waiting."""
    path = _tree_file(tmp_path)
    session = Session.open(path, create=True)
    place = {"generation": 0, "parent_trial": None, "child": 0}
    session.study.enqueue_trial({}, user_attrs={PREFIX + k: v for k, v in place.items()})
    session.close()
    with deadline(300):  # the slot left waiting, unadopted, would be waited for forever
        run_study(path)
    session = Session.open(path, create=False)
    try:
        trials = session.study.get_trials(deepcopy=False)
        assert all(t.state.is_finished() for t in trials)
        slots = [(trial_attr(t, "generation"), trial_attr(t, "parent_trial"),
                  trial_attr(t, "child")) for t in trials]  # fmt: skip
        assert len(slots) == len(set(slots)) == 12
        assert trials[0].params and trial_attr(trials[0], "fork_step") == 0  # it ran as root 0
    finally:
        session.close()


def test_a_probed_tree_ranks_on_the_probe_and_forks_from_before_it(tmp_path: Path) -> None:
    path = _tree_file(tmp_path, probe=0.125)
    doc = yaml.safe_load(Path(path).read_text())
    doc["pruner"] = {"name": "MedianPruner", "n_startup_trials": 0, "n_warmup_steps": 2}
    Path(path).write_text(yaml.safe_dump(doc))
    run_study(path)
    session = Session.open(path, create=False)
    try:
        trials = session.study.get_trials(deepcopy=False)
        inner = [t for t in trials if trial_attr(t, "generation") < 2 and t.value is not None]
        # a node's value is its model's (its final evaluation, which its checkpoint holds); the
        # probe's objective is recorded beside it and ranks the survivors
        assert inner and all(trial_attr(t, "probe_value") is not None for t in inner)
        assert all(t.value == trial_attr(t, "evaluations")[-1]["val_loss"] for t in inner)
        assert all(trial_attr(t, "probe_value") != t.value for t in inner)
        for g in (0, 1):
            nodes = [t for t in inner if trial_attr(t, "generation") == g]
            ranked = sorted(nodes, key=lambda t: (trial_attr(t, "probe_value"), t.number))
            kids = {trial_attr(t, "parent_trial") for t in trials
                    if trial_attr(t, "generation") == g + 1}  # fmt: skip
            assert kids == {t.number for t in ranked[: len(kids)]}
        for t in inner:  # the probe's 64 samples count as the node's cost, not its record
            rung = [128, 256][trial_attr(t, "generation")]
            fork = trial_attr(t, "fork_samples")
            assert trial_attr(t, "samples_trained") == rung - fork + 64
            assert max(e["samples"] for e in trial_attr(t, "evaluations")) == rung
        last = [t for t in trials if trial_attr(t, "generation") == 2]
        assert all(trial_attr(t, "probe_value") is None for t in last)
        # the pruner waits from a node's fork (search.pruning), and spares the leaves, which
        # are judged after their cooldown (tests/test_budget.py tests the wrapper itself)
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        assert all(len(t.intermediate_values) > FORK_GRACE for t in pruned)
        assert all(t.state == TrialState.COMPLETE for t in last)
        best = winner(session)
        assert best is not None
        _, result = replay(session, best.number, say=lambda _: None)
        assert result.compared > 0 and result.differs == []
    finally:
        session.close()


def test_two_workers_fill_every_slot_once(tmp_path: Path) -> None:
    path = _tree_file(tmp_path)
    Session.open(path).close()  # create the study before the second worker opens it
    # a worker as users start one on another machine (a forked child of this process could
    # inherit a lock held by one of its threads)
    cmd = [sys.executable, "-m", "hpsearch", "worker", path]
    other = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_study(path)
    out, _ = other.communicate(timeout=300)  # a bound for a hung worker, not a timing
    assert other.returncode == 0, out
    session = Session.open(path, create=False)
    try:
        trials = session.study.get_trials(deepcopy=False)
        slots = [(trial_attr(t, "generation"), trial_attr(t, "parent_trial"),
                  trial_attr(t, "child")) for t in trials]  # fmt: skip
        assert len(slots) == len(set(slots)) == 12
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    finally:
        session.close()


def test_the_plan_of_a_deep_tree_works_out_each_generation_once() -> None:
    """Each generation's slots depend on every generation before it; worked out again for every
    question, a 25-generation tree took minutes per new node (2^g calls)."""
    tree = TreeSettings(roots=4, rungs=tuple((i + 1) / 25 for i in range(25)), keep=0.25,
                        children=4, probe=0.0, hparams={})  # fmt: skip
    trials, parent = [node(i, 0, None, i, float(i)) for i in range(4)], 3
    for g in range(1, 25):
        base = len(trials)
        trials += [node(base + c, g, parent, c, float(base + c)) for c in range(4)]
        parent = base + 3  # the best of its generation

    class Counted(TreePlan):
        calls = 0

        def _slots_of(self, g: int) -> Any:
            Counted.calls += 1
            return super()._slots_of(g)

    plan = Counted(trials, tree, "maximize", retries=1)
    assert plan.next().slot is None and plan.protected() == set() and plan.size() == 100
    assert Counted.calls == 25


def test_a_trial_enqueued_by_hand_is_a_root(tmp_path: Path) -> None:
    """Optuna's `enqueue_trial` before the study starts: the trial takes a root's slot with its
    enqueued values (the rest sampled), and the tree grows as planned around it."""
    path = _tree_file(tmp_path)
    session = Session.open(path, create=True)
    session.study.enqueue_trial({"lr": 0.0123, "hidden": 16})
    session.close()
    with deadline(300):
        run_study(path)
    session = Session.open(path, create=False)
    try:
        trials = session.study.get_trials(deepcopy=False)
        assert all(t.state.is_finished() for t in trials) and len(trials) == 12
        first = trials[0]
        assert (first.params["lr"], first.params["hidden"]) == (0.0123, 16)
        assert set(first.params) == set(trials[1].params)  # the rest sampled, as for any root
        assert slot_of(first) == (0, None, 0) and trial_attr(first, "fork_step") == 0
        slots = [slot_of(t) for t in trials]
        assert None not in slots and len(set(slots)) == 12
    finally:
        session.close()


def test_a_trial_enqueued_by_hand_after_the_roots_fails_saying_why(tmp_path: Path, capsys) -> None:
    path = tiny_study(tmp_path, tree=True)  # 2 roots, then 1 child of the better one
    ctx = run_context(Session.open(path, create=True))
    session = ctx.session
    tree = Tree(ctx)
    runner = TrialRunner(ctx, Restorer(ctx), tree)
    try:
        for _ in range(2):
            job = tree.new_job(3)
            assert isinstance(job, Job) and job.generation == 0
            runner.run(job)
        session.study.enqueue_trial({"lr": 0.05})
        job = tree.new_job(3)
        assert isinstance(job, Job) and job.generation == 1  # the tree goes on as planned
        stray = session.study.get_trials(deepcopy=False)[2]
        assert stray.state == TrialState.FAIL and slot_of(stray) is None
        assert trial_attr(stray, "fail_kind") == "unplaced"  # not retried
        assert "only as roots" in trial_attr(stray, "fail_reason")
        assert "trial 2: not run: enqueued by hand after" in capsys.readouterr().out
        assert job.number == 3
        finished, _, planned = StudyProgress(ctx, 3, size=tree.size).counts()
        assert (finished, planned) == (2, 3)  # the stray is not counted as one of the tree's
    finally:
        close_context(ctx)


def test_a_typoed_search_key_in_a_tree_is_refused_with_the_key_it_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lrr` for `lr` (fixed in tree.hparams): the roots would sample values nothing reads.
    Before, a tree study said "fix the task or warmup.hparams" (a file with no warmup:), or ran."""
    from hpsearch.cli import main

    path = _tree_file(tmp_path)
    doc = yaml.safe_load(Path(path).read_text())
    doc["tree"]["hparams"]["lr"] = doc["search_space"].pop("lr")["float"][0]
    doc["search_space"]["lrr"] = {"float": [1e-3, 1e-1], "log": True}
    Path(path).write_text(yaml.safe_dump(doc))
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert "search_space.lrr: did you mean 'lr'?" in err and "warmup" not in err
