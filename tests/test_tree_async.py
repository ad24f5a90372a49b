"""The asynchronous fork tree's plan (`tree.promotion: async`), on synthetic trials: a node is
promoted as soon as it ranks in the best `keep` of its generation settled so far; at its close a
generation has promoted what the synchronous tree would, so the budget is the same; what a node
will fork from is protected until it has, and no more than survive; and workers simulated on
the plan (each node takes as long as its segment) are kept busy where the synchronous tree
leaves them waiting for a generation."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpsearch.config import (
    TreeSettings,
    generation_sizes,
    load_study_file,
    make_sampler,
    survivors_of,
)
from hpsearch.config.budget import roots_for
from hpsearch.errors import UsageError
from hpsearch.search.records import PREFIX
from hpsearch.search.scheduler.tree import Tree
from hpsearch.search.scheduler.tree_async import AsyncTreePlan
from hpsearch.search.scheduler.tree_plan import TreePlan, plan_of
from hpsearch.search.session import Session, check_fingerprint, fingerprint
from hpsearch.testing.conformance.scheduler import close_context, run_context, tiny_study

TREE = TreeSettings(roots=4, rungs=(0.25, 0.5, 1.0), keep=0.5, children=2, probe=0.0, hparams={})


def node(
    number: int, slot: tuple[int, int | None, int], value: float | None,
    state: TrialState = TrialState.COMPLETE,
) -> FrozenTrial:  # fmt: skip
    g, parent, child = slot
    user: dict[str, Any] = {PREFIX + "generation": g, PREFIX + "parent_trial": parent,
                            PREFIX + "child": child}  # fmt: skip
    if state == TrialState.COMPLETE:
        user[PREFIX + "final_checkpoint"] = f"ck-{number}"
    t = create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1.0)}, user_attrs=user,
    )  # fmt: skip
    t.number = number
    return t


def plan(trials: list[FrozenTrial], tree: TreeSettings = TREE) -> AsyncTreePlan:
    return AsyncTreePlan(trials, tree, "maximize", retries=1)


def test_a_node_is_promoted_once_it_ranks_in_the_best_keep_so_far() -> None:
    roots = [node(0, (0, None, 0), 0.5), node(1, (0, None, 1), 0.9)]
    running = [node(2, (0, None, 2), None, TrialState.RUNNING),
               node(3, (0, None, 3), None, TrialState.RUNNING)]  # fmt: skip
    # roots first: the next root while any is left, the promotion after them
    p = plan(roots)
    assert [n.slot for n in p.candidates()] == [(0, None, 2), (0, None, 3), (1, 1, 0)]
    # one root settled: floor(0.5 x 1) = 0 promotions yet
    assert [n.slot for n in plan(roots[:1]).candidates()] == [(0, None, 1), (0, None, 2),
                                                              (0, None, 3)]  # fmt: skip
    # every root asked, two settled: the better of them is promoted while the others run,
    # where the synchronous tree waits for the whole generation
    nxt = plan([*roots, *running]).next()
    assert nxt.slot == (1, 1, 0) and nxt.parent is not None and nxt.parent.number == 1
    assert TreePlan([*roots, *running], TREE, "maximize", retries=1).next().wait
    # then its other child; then nothing until another root settles
    p = plan([*roots, *running, node(4, (1, 1, 0), None, TrialState.RUNNING)])
    assert [n.slot for n in p.candidates()] == [(1, 1, 1)]
    p = plan([*roots, *running, node(4, (1, 1, 0), None, TrialState.RUNNING),
              node(5, (1, 1, 1), None, TrialState.RUNNING)])  # fmt: skip
    # kept: the parent until its children settle; trial 0, which may be the second promotion
    assert p.next().wait and p.protected() == {"ck-0", "ck-1"}


def test_the_shallowest_generation_first_and_the_close_promotes_the_rest() -> None:
    trials = [node(0, (0, None, 0), 0.5), node(1, (0, None, 1), 0.9),
              node(2, (1, 1, 0), 0.95), node(3, (1, 1, 1), 0.7),
              node(4, (0, None, 2), 0.8), node(5, (0, None, 3), 0.6)]  # fmt: skip
    p = plan(trials)
    # generation 0 is closed: its quota is the synchronous tree's (survivors_of(4) = 2), so
    # its second promotion (the best not promoted yet: trial 4) comes before generation 1's
    # first (floor(0.5 x 2) = 1: trial 2)
    assert [n.slot for n in p.candidates()] == [(1, 4, 0), (2, 2, 0)]
    assert p.closed[0] and not p.final[0] and p.quota[0] == survivors_of(TREE, 4)


def test_a_damaged_or_pruned_generation_closes_with_what_it_has() -> None:
    trials = [node(i, (0, None, i), None, TrialState.PRUNED) for i in range(3)]
    trials.append(node(3, (0, None, 3), 0.4))
    p = plan(trials)
    assert p.closed[0] and [n.slot for n in p.candidates()] == [(1, 3, 0)]
    pruned = [node(i, (0, None, i), None, TrialState.PRUNED) for i in range(4)]
    p = plan(pruned)  # nothing to fork from: the tree is grown, not waiting
    assert p.candidates() == [] and p.grown() and not p.next().wait


# -- the tree a plan grows, simulated --------------------------------------------------------


def simulate(
    tree: TreeSettings, workers: int, *, seed: int = 0, check_pins: bool = False, spread: float = 1
) -> tuple[list[FrozenTrial], float]:
    """Run the plan with `workers` simulated workers: each node takes as long as its segment
    (its rung less its parent's, and its probe) times a factor drawn in [1/spread, spread]
    (batch sizes, pruning and machines make nodes uneven), and ends with a value drawn from its
    parent's; a worker asks the plan whenever it is free. Returns the trials and the workers'
    utilisation (time in nodes / workers x wall time). `check_pins`: every parent a node forks
    from was protected without a gap from its completion until then, and no generation
    protects more than survive it (so GC never deletes a checkpoint a node forks from later,
    and the disk stays bounded)."""
    rng = random.Random(seed)
    trials: list[FrozenTrial] = []
    ends: dict[int, float] = {}
    now = busy = 0.0
    since: dict[str, float] = {}  # protected checkpoint -> protected without a gap since
    sizes = generation_sizes(tree)

    def look() -> None:
        if not check_pins:
            return
        protected = plan_of(trials, tree, "maximize", retries=0).protected()
        since.update({ck: since.get(ck, now) for ck in protected})
        for ck in set(since) - protected:
            del since[ck]
        for g in range(len(tree.rungs)):
            mine = [ck for ck in protected if slot_of(trials[int(ck[3:])])[0] == g]
            assert len(mine) <= survivors_of(tree, sizes[g])

    while True:
        while len(ends) < workers:
            nxt = plan_of(trials, tree, "maximize", retries=0).next()
            if nxt.slot is None:
                break
            g, parent, _ = nxt.slot
            if check_pins and parent is not None:
                done = trials[parent].datetime_complete
                assert f"ck-{parent}" in since and since[f"ck-{parent}"] <= done, parent
            number = len(trials)
            trials.append(node(number, nxt.slot, None, TrialState.RUNNING))
            span = tree.rungs[g] - (tree.rungs[g - 1] if g else 0.0)
            span = span * spread ** rng.uniform(-1, 1) + (tree.probe if g < len(sizes) - 1 else 0)
            ends[number] = now + span
            busy += span
            look()
        if not ends:
            break
        number = min(ends, key=lambda n: (ends[n], n))
        now = ends.pop(number)
        slot = slot_of(trials[number])
        start = 0.0 if slot[1] is None else trials[slot[1]].value or 0.0
        trials[number] = node(number, slot, start + rng.random())
        trials[number].datetime_complete = now  # type: ignore[assignment]  # simulated time
        look()
    return trials, busy / (workers * now)


def slot_of(t: FrozenTrial) -> tuple[int, int | None, int]:
    g, parent, child = (t.user_attrs[PREFIX + k] for k in ("generation", "parent_trial", "child"))
    return g, parent, child


SHAPES = [
    TREE,
    TreeSettings(roots=13, rungs=(0.25, 0.5, 1.0), keep=0.25, children=2, probe=0.05,
                 hparams={}),
    TreeSettings(roots=7, rungs=(0.2, 0.4, 0.7, 1.0), keep=0.4, children=3, probe=0.0,
                 hparams={}),
    TreeSettings(roots=5, rungs=(0.5, 1.0), keep=0.3, children=1, probe=0.0, hparams={}),
]  # fmt: skip


@pytest.mark.parametrize("workers", [1, 3, 8])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_the_asynchronous_tree_grows_the_synchronous_trees_sizes(shape: int, workers: int) -> None:
    """At equal shape the asynchronous tree trains what the synchronous one does (the budget
    sizes both alike); the parents it forks from are protected until then, and per generation
    no more checkpoints are protected than survive it."""
    tree = SHAPES[shape]
    trials, _ = simulate(tree, workers, seed=shape, check_pins=True)
    gens = [slot_of(t)[0] for t in trials]
    assert [gens.count(g) for g in range(len(tree.rungs))] == generation_sizes(tree)
    assert len({slot_of(t) for t in trials}) == len(trials)  # every slot filled once
    sync = dataclasses.replace(tree, promotion="sync")
    assert len(simulate(sync, workers, seed=shape)[0]) == len(trials)


def test_one_worker_grows_the_same_tree_from_any_prefix() -> None:
    """The plan reads only the trials: cut the one-worker run anywhere, the plan over the
    prefix asks the node the uninterrupted run asked next (so a resumed study asks it too)."""
    tree = SHAPES[1]
    trials, _ = simulate(tree, 1, seed=3)
    for cut in range(len(trials)):
        assert plan_of(trials[:cut], tree, "maximize", retries=0).next().slot == slot_of(
            trials[cut]
        )


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_with_one_worker_it_is_the_synchronous_tree(shape: int) -> None:
    """One worker settles every node before it asks the next, so each generation is whole
    before its first promotion: the same nodes, in the same order, as the synchronous tree."""
    tree = SHAPES[shape]
    asynchronous, _ = simulate(tree, 1, seed=shape, spread=2)
    synchronous, _ = simulate(dataclasses.replace(tree, promotion="sync"), 1, seed=shape, spread=2)
    assert [slot_of(t) for t in asynchronous] == [slot_of(t) for t in synchronous]


@pytest.mark.parametrize("workers, runs_each", [(8, 8), (16, 4)])
def test_workers_are_kept_busy_where_the_synchronous_tree_waits(
    workers: int, runs_each: int
) -> None:
    """The default shape sized from a budget of `runs_each` full runs per worker, nodes taking
    up to twice or half their segment's time: the synchronous tree's workers wait at every
    generation's end for its slowest node, the asynchronous tree's promote what ranks so far."""
    shape = TreeSettings(roots=1, rungs=(0.25, 0.5, 1.0), keep=0.25, children=2, probe=0.05,
                         hparams={})  # fmt: skip
    tree = dataclasses.replace(shape, roots=roots_for(runs_each * workers, shape))
    busy = [simulate(tree, workers, seed=s, spread=2)[1] for s in range(3)]
    sync = dataclasses.replace(tree, promotion="sync")
    busy_sync = [simulate(sync, workers, seed=s, spread=2)[1] for s in range(3)]
    assert min(busy) >= 0.9 and sum(busy) > sum(busy_sync)


def test_the_plan_is_the_study_files_choice() -> None:
    assert isinstance(plan_of([], TREE, "minimize", 0), AsyncTreePlan)
    sync = dataclasses.replace(TREE, promotion="sync")
    assert type(plan_of([], sync, "minimize", 0)) is TreePlan


def test_constant_liar_is_on_for_tpe_unless_the_file_says(tmp_path: Path) -> None:
    """Workers asking at once must not propose the same child: TPE counts the running trials
    (Optuna 5's default, not Optuna 4's), unless the study file sets `constant_liar` itself."""
    path = Path(tiny_study(tmp_path, tree=True))
    doc = yaml.safe_load(path.read_text())
    for given, expected in (({}, True), ({"constant_liar": False}, False)):
        path.write_text(yaml.safe_dump({**doc, "sampler": {"name": "TPESampler", **given}}))
        sampler = make_sampler(load_study_file(path), 0)
        assert isinstance(sampler, optuna.samplers.TPESampler)
        assert sampler._constant_liar is expected


def test_a_study_grown_by_one_rule_refuses_the_other(tmp_path: Path) -> None:
    """The rule joins the study's fingerprint: switched under a study that has trials, the file
    is refused naming `tree.promotion`. A synchronous tree's fingerprint is as it was before the
    key existed, so a study made then continues with `promotion: sync` in its file."""
    path = Path(tiny_study(tmp_path, tree=True, promotion="sync"))
    session = Session.open(str(path))
    try:
        check_fingerprint(session)
        assert not any(k.startswith("tree.promotion") for k in fingerprint(session.settings))
        session.study.enqueue_trial({"lr": 0.01})  # something made: the study is an experiment
    finally:
        session.close()
    path.write_text(path.read_text().replace("promotion: sync", "promotion: async"))
    session = Session.open(str(path))
    try:
        with pytest.raises(UsageError, match=re.escape('tree.promotion: "(unset)" -> "async"')):
            check_fingerprint(session)
    finally:
        session.close()


def test_a_look_at_an_unchanged_study_does_not_work_the_plan_out_again(tmp_path: Path) -> None:
    """Idle workers look often: the plan is worked out again only when the trials changed."""
    ctx = run_context(Session.open(tiny_study(tmp_path, tree=True)))
    try:
        tree = Tree(ctx)
        first = tree.plan()
        assert tree.plan() is first
        ctx.session.study.enqueue_trial({"lr": 0.01})  # a new trial: the plan may differ
        assert tree.plan() is not first
    finally:
        close_context(ctx)
