"""One budget for every strategy (issue 23): the fork tree's shape sized from `trials.budget`
(pure), the study-file keys and `--budget`, a classic search and a single fork that stop once
they have spent it, what `hpsearch run` says before and after, and the pruner a tree wraps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.cli import main
from hpsearch.config import TreeSettings, load_study_file
from hpsearch.config.budget import (
    DEFAULT_BUDGET,
    describe_tree,
    generation_sizes,
    roots_for,
    tree_cost,
)
from hpsearch.errors import StudyFileError
from hpsearch.search.pruning import TreePruner
from hpsearch.search.records import PREFIX, trial_attr
from hpsearch.search.session import Session
from hpsearch.testing.conformance.scheduler import tiny_study

SHAPE = TreeSettings(roots=1, rungs=(0.25, 0.5, 1.0), keep=0.25, children=2, probe=0.0,
                     hparams={})  # fmt: skip
DEFAULT = dataclasses.replace(SHAPE, probe=0.05)  # the defaults, with a schedule to probe


# -- the shape, sized from a budget (pure) -----------------------------------------------------


def test_a_tree_costs_each_node_its_segment_and_each_probe() -> None:
    tree = dataclasses.replace(SHAPE, roots=16)
    assert generation_sizes(tree) == [16, 8, 4]
    assert tree_cost(tree) == 16 * 0.25 + 8 * 0.25 + 4 * 0.5 == 8.0
    probed = dataclasses.replace(tree, probe=0.05)  # the leaves are not probed
    assert tree_cost(probed) == pytest.approx(8.0 + 0.05 * (16 + 8))


@pytest.mark.parametrize("budget", [2, 3, 5, 8, 12.5, 16, 40, 100])
def test_the_roots_make_the_tree_spend_about_the_budget(budget: float) -> None:
    roots = roots_for(budget, SHAPE)
    cost = tree_cost(dataclasses.replace(SHAPE, roots=roots))
    # a root more moves the cost by 1/4 of a run, and by more where a survivor more (and its
    # children) comes with it: about the budget, and no other number of roots is closer
    assert abs(cost - budget) <= max(0.75, 0.05 * budget)
    for other in (roots - 1, roots + 1):
        if other >= 1:
            assert (
                abs(tree_cost(dataclasses.replace(SHAPE, roots=other)) - budget)
                >= abs(cost - budget) - 1e-9
            )
    assert roots_for(8, SHAPE) == 16
    sh = dataclasses.replace(SHAPE, keep=0.5, children=1)  # the same generations, no forks
    assert generation_sizes(dataclasses.replace(sh, roots=roots_for(8, sh))) == [16, 8, 4]


def test_the_plan_line_says_the_shape_and_what_it_spends() -> None:
    tree = dataclasses.replace(SHAPE, roots=16, sized=True)
    assert describe_tree(tree, 8) == (
        "budget 8 full runs: 16 roots to 1/4, the best 4 forked into 2 each to 1/2 (8 nodes), "
        "the best 2 forked into 2 each to 1 (4 nodes): 28 nodes, about 8.0 full runs"
    )
    given = dataclasses.replace(tree, sized=False, children=1, keep=0.5)
    assert describe_tree(given, None).startswith("tree.roots 16: 16 roots to 1/4, the best 8 "
                                                 "continued to 1/2 (8 nodes)")  # fmt: skip


# -- the study file and --budget ---------------------------------------------------------------


def _tree_doc(tmp_path: Path, **trials: Any) -> dict[str, Any]:
    with open(tiny_study(tmp_path, tree=True)) as f:
        doc = yaml.safe_load(f)
    doc["tree"] = {"hparams": {"dropout": 0.0}}  # no shape keys: sized from the budget
    doc["trials"].update(trials)
    return doc


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "study.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_a_study_file_with_only_a_budget_gets_the_tree_sized_from_it(tmp_path: Path) -> None:
    s = load_study_file(_write(tmp_path, _tree_doc(tmp_path, budget=8)))
    assert s.tree is not None and s.tree.sized and s.tree.roots == roots_for(8, DEFAULT) == 13
    assert s.tree.probe == 0.05 and s.trials.budget == 8 and s.trials.n == 13 + 8 + 4
    # --budget replaces the file's; tree.roots given is kept, the budget still counts
    again = load_study_file(_write(tmp_path, _tree_doc(tmp_path, budget=8)), budget=4)
    assert again.tree is not None and again.tree.roots == roots_for(4, DEFAULT) == 6
    doc = _tree_doc(tmp_path, budget=8)
    doc["tree"]["roots"] = 5
    s = load_study_file(_write(tmp_path, doc))
    assert s.tree is not None and (s.tree.roots, s.tree.sized, s.trials.budget) == (5, False, 8)
    # neither budget nor roots: the default budget
    s = load_study_file(_write(tmp_path, _tree_doc(tmp_path)))
    assert s.tree is not None and s.trials.budget == DEFAULT_BUDGET
    assert s.tree.roots == roots_for(DEFAULT_BUDGET, DEFAULT)
    # without a schedule there is nothing to probe
    doc = _tree_doc(tmp_path)
    del doc["schedule"]
    s = load_study_file(_write(tmp_path, doc))
    assert s.tree is not None and s.tree.probe == 0 and s.tree.roots == roots_for(6, SHAPE)


@pytest.mark.parametrize(
    "change, key, words",
    [
        (lambda d: d["trials"].update(budget=0), "trials.budget", "> 0"),
        (lambda d: d["trials"].update(budget=0.5), "trials.budget", "smallest tree"),
        (lambda d: d["trials"].update(budget="many"), "trials.budget", "many"),
    ],
)  # fmt: skip
def test_budget_mistakes_name_the_key(tmp_path: Path, change: Any, key: str, words: str) -> None:
    doc = _tree_doc(tmp_path)
    change(doc)
    with pytest.raises(StudyFileError) as err:
        load_study_file(_write(tmp_path, doc))
    assert f": {key}: " in str(err.value) and words in str(err.value)


def test_a_warmup_study_needs_n_or_a_budget(tmp_path: Path) -> None:
    with open(tiny_study(tmp_path)) as f:
        doc = yaml.safe_load(f)
    del doc["trials"]["n"]
    with pytest.raises(StudyFileError, match=r": trials\.n: required: .*budget: 16"):
        load_study_file(_write(tmp_path, doc))
    doc["trials"]["budget"] = 3
    assert load_study_file(_write(tmp_path, doc)).trials.budget == 3


# -- every strategy stops at the budget --------------------------------------------------------


def _spent(path: str, *, classic: bool) -> tuple[float, list[optuna.trial.FrozenTrial]]:
    """Full runs spent, and the trials, read back from the study."""
    session = Session.open(path, classic=classic, create=False)
    try:
        trials = session.study.get_trials(deepcopy=False)
        full = 256 * (2 if not classic and session.settings.tree is None else 1)  # TinyTask
        warm = 0 if classic else int(session.attr("warmup_samples", 0) or 0)
        spent = warm + sum(int(trial_attr(t, "samples_trained", 0)) for t in trials)
        return spent / full, trials
    finally:
        session.close()


def test_classic_stops_starting_trials_once_it_has_spent_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, _tree_doc(tmp_path, budget=8))
    assert main(["run", path, "--no-fork", "--budget", "3"]) == 0
    out = capsys.readouterr().out
    assert "budget 3 full runs: trials from scratch" in out
    spent, trials = _spent(path, classic=True)
    assert 3 <= spent < 4  # the trial running when it was spent finishes
    last = sorted(trials, key=lambda t: t.number)[:-1]
    assert sum(int(trial_attr(t, "samples_trained")) for t in last) < 3 * 256
    assert f"spent: {spent:.2f} of the budget's 3 full runs" in out


def test_a_single_fork_counts_its_warmup_in_the_budget(tmp_path: Path) -> None:
    with open(tiny_study(tmp_path)) as f:
        doc = yaml.safe_load(f)
    doc["trials"] = {"budget": 3, "epochs": 1, "eval_every": 0.5}  # a full run: 2 epochs
    path = _write(tmp_path, doc)
    assert main(["run", path]) == 0
    spent, trials = _spent(path, classic=False)
    # half a run of warm-up, then trials of half a run each until 3 runs are spent: 5 trials
    assert spent == 3 and len(trials) == 5


def test_the_tree_is_sized_from_budget_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, _tree_doc(tmp_path, budget=8))
    assert main(["run", path, "--budget", "3"]) == 0
    out = capsys.readouterr().out
    roots = roots_for(3, DEFAULT)
    assert f"budget 3 full runs: {roots} roots to 1/4, the best 1 forked into 2 each" in out
    spent, trials = _spent(path, classic=False)
    assert [trial_attr(t, "generation") for t in trials].count(0) == roots == 4
    assert f"spent: {spent:.2f} of the budget's 3 full runs" in out


# -- the pruner a tree wraps -------------------------------------------------------------------


class PruneAll(optuna.pruners.BasePruner):
    """A pruner with no warm-up keyword that prunes whatever it is asked about."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def _node(study: optuna.Study, g: int, state: TrialState, reports: int) -> Any:
    study.add_trial(create_trial(
        state=state, value=1.0 if state == TrialState.COMPLETE else None,
        params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1.0)},
        user_attrs={PREFIX + "generation": g, PREFIX + "parent_trial": None},
        intermediate_values={10 * g + i: 1.0 for i in range(1, reports + 1)},
    ))  # fmt: skip
    return study.get_trials(deepcopy=False)[-1]


def test_the_wrapped_pruner_waits_from_the_fork_spares_leaves_and_the_rung_s_survivors() -> None:
    tree = TreeSettings(roots=4, rungs=(0.25, 0.5, 1.0), keep=0.5, children=2, probe=0.0,
                        hparams={})  # fmt: skip
    study = optuna.create_study()
    pruner = TreePruner(PruneAll(), tree, grace=1)
    # a child's first report since its fork (at step 11: far past any warm-up from scratch)
    assert not pruner.prune(study, _node(study, 1, TrialState.RUNNING, reports=1))
    assert pruner.prune(study, _node(study, 1, TrialState.RUNNING, reports=2))
    # a leaf (the last generation) is never pruned: it is judged after its cooldown
    assert not pruner.prune(study, _node(study, 2, TrialState.RUNNING, reports=3))
    # generation 0 plans 4 nodes and keeps 2: two may be pruned, not a third
    _node(study, 0, TrialState.PRUNED, 2)
    assert pruner.prune(study, _node(study, 0, TrialState.RUNNING, reports=2))
    _node(study, 0, TrialState.PRUNED, 2)
    assert not pruner.prune(study, _node(study, 0, TrialState.RUNNING, reports=2))


def test_a_tree_whose_pruner_would_cut_everything_keeps_its_planned_survivors(
    tmp_path: Path,
) -> None:
    doc = _tree_doc(tmp_path)
    doc["tree"].update(roots=4, rungs=[0.25, 0.5, 1.0], keep=0.5, children=2)
    doc["trials"].update(epochs=2, eval_every=0.125)
    doc["pruner"] = {"name": "ThresholdPruner", "upper": 0.0}  # every loss is above: prune
    path = _write(tmp_path, doc)
    assert main(["run", path]) == 0
    _, trials = _spent(path, classic=False)
    for g in range(3):
        nodes = [t for t in trials if trial_attr(t, "generation") == g]
        done = [t for t in nodes if t.state == TrialState.COMPLETE]
        assert len(nodes) == 4 and len(done) >= 2, (g, [t.state.name for t in nodes])
