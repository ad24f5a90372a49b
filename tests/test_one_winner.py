"""One winner everywhere, and no silent edits.

Every surface names the same trial: the run's summary, `best`, `best --export`, `replay`,
`hpsearch.load().best()`, `best_model()`, the plot, the export, and Optuna's own `best_trial`
(so optuna-dashboard); GC keeps its final checkpoint. A study file edited under an existing
study, in what its trials mean (the tree's shape, the budget, the schedule, the search space),
is refused with exit 2 and what changed. Every sample is counted once, probes included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import hpsearch
from hpsearch.cli import main
from hpsearch.report.plot import branch_plot_data
from hpsearch.report.status import study_view
from hpsearch.search.records import PREFIX, trial_attr
from hpsearch.search.session import Session
from hpsearch.search.winner import pick
from studyutil import write_study

TREE = {
    "warmup": None,
    "tree": {"roots": 4, "rungs": [0.25, 0.5, 1.0], "keep": 0.5, "children": 2, "probe": 0.1,
             "hparams": {"weight_decay": 1e-4, "hidden": 64}},
    "trials": {"epochs": 1, "eval_every": 0.25},
    "schedule": {"name": "wsd", "decay": 0.25},
    "checkpoints": {"every": 0.5, "keep_best": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    path = write_study(tmp_path_factory.mktemp("grown"), name="w1", **TREE)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", path]) == 0
    return path, out.getvalue()


def test_every_surface_names_the_same_winner(
    grown: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, run_output = grown
    s = Session.open(path, create=False)
    try:
        optuna_best = optuna.load_study(study_name="w1", storage=s.storage_url).best_trial
        number = optuna_best.number
        # the node's value is the evaluation of the model in its final checkpoint, not a probe's
        evaluations = trial_attr(optuna_best, "evaluations")
        assert optuna_best.value == evaluations[-1]["val_accuracy"]
        final = trial_attr(optuna_best, "final_checkpoint")
        assert s.store.exists(final)  # kept by GC (keep_best 1)
        view = study_view(s)
        assert view.best() is not None and view.best().number == number
        assert branch_plot_data(view).best_number == number
    finally:
        s.close()
    assert f"best: trial {number}, value {optuna_best.value:.6g}" in run_output
    capsys.readouterr()
    assert main(["best", path, "--export", str(tmp_path / "out")]) == 0
    assert f"best trial: {number} " in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "params.json").read_text())["trial"] == number
    assert main(["replay", path]) == 0
    assert f"recipe of trial {number}:" in capsys.readouterr().out
    with hpsearch.load(path) as study:
        assert study.best().number == number
        study.best_model()  # the winner's checkpoint, loaded
    assert main(["export", path, "-o", str(tmp_path / "t.csv")]) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "t.csv")
    assert table.loc[table["winner"], "number"].tolist() == [number]


def test_the_rule_is_the_best_value_ties_to_the_lowest_number() -> None:
    assert pick([(3, 0.5), (1, 0.9), (2, 0.9), (0, float("nan"))], "maximize") == 1
    assert pick([(3, 0.5), (1, 0.9), (2, 0.5)], "minimize") == 2
    assert pick([(0, None)], "minimize") is None
    # Optuna's best_trial applies the same rule (a tree node of an early generation that
    # scores best is the winner: its checkpoint holds the model that scored it)
    study = optuna.create_study(direction="maximize")
    for n, v in enumerate([0.5, 0.9, 0.9, 0.3]):
        t = create_trial(value=v, params={"lr": 0.1},
                         distributions={"lr": FloatDistribution(0.01, 1.0)},
                         user_attrs={PREFIX + "generation": 2 - min(n, 2)})  # fmt: skip
        study.add_trial(t)
    assert study.best_trial.number == pick([(t.number, t.value) for t in study.trials], "maximize")


def _edited(path: str, tmp_path: Path, change: Any) -> str:
    dst = tmp_path / "study"
    shutil.copytree(Path(path).parent, dst)
    copy = dst / Path(path).name
    doc = yaml.safe_load(copy.read_text())
    change(doc)
    copy.write_text(yaml.safe_dump(doc))
    return str(copy)


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        (lambda d: d["tree"].update(roots=5), "tree.roots: 4 -> 5"),
        (lambda d: d["tree"].update(keep=0.25), "tree.keep: 0.5 -> 0.25"),
        (lambda d: d["tree"].update(rungs=[0.5, 1]), "tree.rungs: [0.25, 0.5, 1.0] -> [0.5, 1.0]"),
        (lambda d: d["trials"].update(epochs=2), "trials.epochs: 1"),
        (lambda d: d["schedule"].update(decay=0.5), "schedule: "),
        (lambda d: d["search_space"].pop("dropout"), "search_space.dropout: "),
        (lambda d: d["search_space"]["lr"].update(float=[1e-3, 0.1]), "search_space.lr: "),
    ],
    ids=["roots", "keep", "rungs", "budget", "schedule", "space-key", "space-range"],
)  # fmt: skip
def test_an_edit_that_changes_what_the_study_means_is_refused(
    grown: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any,
    shown: str,
) -> None:  # fmt: skip
    path = _edited(grown[0], tmp_path, change)
    capsys.readouterr()
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert shown in err and "a new `name`" in err and "Traceback" not in err
    s = Session.open(path, create=False)
    try:  # nothing ran under the edited file
        assert len(s.study.get_trials()) == 12
    finally:
        s.close()


def test_an_edit_that_only_steers_the_search_is_taken(
    grown: tuple[str, str], tmp_path: Path
) -> None:
    def steer(doc: dict[str, Any]) -> None:
        doc["sampler"] = {"name": "RandomSampler"}
        doc["pruner"] = {"name": "NopPruner"}
        doc["checkpoints"]["keep_best"] = 3

    assert main(["run", _edited(grown[0], tmp_path, steer)]) == 0


def test_every_sample_is_counted_once(grown: tuple[str, str]) -> None:
    path, run_output = grown
    s = Session.open(path, create=False)
    try:
        trials = s.study.get_trials()
        total = sum(trial_attr(t, "samples_trained") for t in trials)
        n = s.samples_per_epoch()
        for t in trials:  # a probed node's cost holds its probe, once
            if t.state != TrialState.COMPLETE or trial_attr(t, "probe_value") is None:
                continue
            end = trial_attr(t, "evaluations")[-1]["samples"]  # where its own segment ended
            probe = trial_attr(t, "samples_trained") - (end - trial_attr(t, "fork_samples"))
            assert round(0.1 * n) <= probe < round(0.1 * n) + t.params["batch_size"]
        view = study_view(s)
        assert sum(v.samples_trained for v in view.trials) == total
    finally:
        s.close()
    assert f"spent: {total / n:.2f} " in run_output and f"({total} training samples" in run_output
