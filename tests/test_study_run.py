"""The forking study end to end through the CLI: trials, tree, GC, classic mode, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.config import load_study_file, make_pruner, make_sampler
from hpsearch.lineage import WARMUP, WORKERS
from hpsearch.search.records import PREFIX as ATTR
from hpsearch.search.session import Session
from studyutil import ROOT, write_study


def _session(path: str, classic: bool = False) -> Session:
    return Session.open(path, classic=classic, create=False)


def test_study_end_to_end(tmp_path, capsys):
    path = write_study(tmp_path)
    assert main(["run", path]) == 0
    out = capsys.readouterr().out
    assert "warm-up done" in out and "best: trial" in out and "training steps:" in out
    assert "8 finished trials" in out and "8 in this run" in out
    assert all(len(line) <= 120 for line in out.splitlines() if "training steps" in line)
    s = _session(path)
    trials = s.study.get_trials()
    assert len(trials) == 8
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert any(t.state == TrialState.PRUNED for t in trials)
    base = s.attr("base_checkpoint")
    assert base and s.store.exists(base)
    assert all(t.user_attrs[ATTR + "parent_checkpoint"] == base for t in trials)
    assert {t.user_attrs[ATTR + "fork_step"] for t in trials} == {s.attr("warmup_steps")}

    rows = s.lineage.checkpoints()
    on_disk = {i.id for i in s.store.list()}
    committed = {r.id for r in rows if r.status == "committed"}
    assert committed == on_disk  # the tree in the database matches the files
    assert not {r.id for r in rows if r.status == "deleted"} & on_disk
    assert {r.status for r in rows} <= {"committed", "deleted"}
    for t in trials:
        kept = [r for r in rows if r.trial == t.number and r.status == "committed"]
        if t.state == TrialState.PRUNED:
            assert kept == []  # pruned trials' checkpoint directories are gone
            for r in rows:
                if r.trial == t.number:
                    assert not os.path.exists(os.path.join(s.store.url, r.id))
        else:
            assert all(r.kind == "final" for r in kept)
    finals = [r for r in rows if r.kind == "final" and r.status == "committed"]
    assert 1 <= len(finals) <= 2  # keep_best
    best = s.study.best_trial
    assert best.user_attrs[ATTR + "final_checkpoint"] in on_disk
    assert (on_disk - {best.user_attrs[ATTR + "final_checkpoint"]}) >= {base}
    s.close()

    # the study is an ordinary Optuna study
    storage = load_study_file(path).storage
    study = optuna.load_study(study_name="tiny", storage=storage)
    df = study.trials_dataframe()
    assert len(df) == 8 and set(df["state"]) <= {"COMPLETE", "PRUNED"}
    # the objective is named for Optuna (set_metric_names), so its column is value_<metric>
    assert df["value_val_accuracy"].notna().all()

    # a rerun of a finished study says so, and trains nothing
    assert main(["run", path]) == 0
    assert "study tiny: nothing to do: it has 8 finished trials" in capsys.readouterr().out

    # --trials means finished trials in total: 8 already, so 10 runs 2 more
    assert main(["run", path, "--trials", "10"]) == 0
    out = capsys.readouterr().out
    assert "10 finished trials" in out and "2 in this run" in out
    s = _session(path)
    assert len(s.study.get_trials()) == 10
    s.close()


def test_forked_trials_resume_the_base_and_classic_starts_from_scratch(tmp_path):
    path = write_study(tmp_path, trials={"n": 3, "epochs": 1, "eval_every": 0.25},
                       pruner={"name": "NopPruner"})  # fmt: skip
    assert main(["run", path]) == 0
    assert main(["run", path, "--no-fork"]) == 0
    fork, classic = _session(path), _session(path, classic=True)
    warm = [v for _, v in fork.attr("warmup_curve")]
    forked = {}
    for t in fork.study.get_trials():
        forked[t.number] = first = t.intermediate_values[min(t.intermediate_values)]
        # a quarter epoch after the fork, the trial is where the warm-up left it, not at chance
        assert warm[-1] > 0.85 and abs(first - warm[-1]) < 0.1
    for t in classic.study.get_trials():
        first = t.intermediate_values[min(t.intermediate_values)]
        assert first < forked[t.number] - 0.1  # a quarter epoch from scratch: same params
        assert t.user_attrs.get(ATTR + "parent_checkpoint") is None
        # classic trials train warm-up + trial budget themselves
        assert t.user_attrs[ATTR + "samples_trained"] == fork.attr("warmup_samples") + 1438
    assert classic.attr("base_checkpoint") is None
    fork.close()
    classic.close()


@pytest.mark.parametrize(
    "sampler",
    [
        {"name": "RandomSampler"},
        {"name": "GridSampler"},
    ],
)
def test_grid_and_random_samplers_run(tmp_path, sampler):
    path = write_study(
        tmp_path,
        trials={"n": 4, "epochs": 0.5, "eval_every": 0.25},
        search_space={
            "batch_size": {"categorical": [32, 64]},
            "dropout": {"categorical": [0.0, 0.3]},
        },
        sampler=sampler,
    )
    assert main(["run", path]) == 0
    s = _session(path)
    trials = s.study.get_trials()
    assert len(trials) == 4
    if sampler["name"] == "GridSampler":  # the grid is covered exactly once
        seen = {(t.params["batch_size"], t.params["dropout"]) for t in trials}
        assert seen == {(32, 0.0), (32, 0.3), (64, 0.0), (64, 0.3)}
    s.close()


def test_example_studies_build_their_samplers_and_pruners():
    studies = os.path.join(ROOT, "studies")
    names = [n for n in os.listdir(studies) if n.endswith(".yaml")]
    assert "quickstart.yaml" in names
    for n in names:
        settings = load_study_file(os.path.join(studies, n))
        assert make_sampler(settings, 0) is not None
        assert make_pruner(settings) is not None


def test_diverging_trial_ends_at_once_and_the_study_goes_on(tmp_path, capsys):
    path = write_study(
        tmp_path,
        trials={"n": 3, "epochs": 1, "eval_every": 0.25},
        search_space={"lr": {"categorical": [1e-3, 1e7, 3e-3]}},
        sampler={"name": "GridSampler"},
    )
    assert main(["run", path]) == 0
    s = _session(path)
    trials = s.study.get_trials()
    assert len(trials) == 3
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.params["lr"] for t in failed] == [1e7]
    reason = failed[0].user_attrs[ATTR + "fail_reason"]
    assert "became nan" in reason or "became inf" in reason
    assert failed[0].user_attrs[ATTR + "steps_trained"] < 10  # not hours of garbage
    assert failed[0].user_attrs[ATTR + "fail_kind"] == "diverged"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert "diverged" in capsys.readouterr().out
    s.close()


# -- bad input: one message with the fix, exit status 2, before any training ------------------


def _run_err(path: str, capsys) -> tuple[int, str]:
    code = main(["run", path])
    return code, capsys.readouterr().err


def test_invalid_yaml(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nwarmup: [1, 2\n")
    code, err = _run_err(str(path), capsys)
    assert code == 2 and "bad.yaml" in err and "line" in err
    assert "Traceback" not in err


def test_task_that_does_not_import(tmp_path, capsys):
    task = tmp_path / "broken.py"
    task.write_text("import no_such_module_here\n")
    code, err = _run_err(write_study(tmp_path, task=f"{task}:T"), capsys)
    assert code == 2 and "no_such_module_here" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "runs" / "tiny" / "checkpoints" / "tiny")


def test_task_missing_a_method(tmp_path, capsys):
    task = tmp_path / "partial.py"
    task.write_text("import hpsearch\nclass T(hpsearch.Task):\n    def datasets(self): pass\n")
    code, err = _run_err(write_study(tmp_path, task=f"{task}:T"), capsys)
    assert code == 2 and "model" in err and "implement" in err.lower()


def test_metric_that_evaluate_does_not_return(tmp_path, capsys):
    path = write_study(tmp_path, objective={"metric": "accuracy", "direction": "maximize"})
    code, err = _run_err(path, capsys)
    assert code == 2
    assert "objective.metric" in err and "val_accuracy" in err and "val_loss" in err
    ckpts = tmp_path / "runs" / "tiny" / "checkpoints" / "tiny"
    assert not ckpts.exists() or not [p for p in ckpts.iterdir() if not p.name.startswith(".")]


def test_storage_that_cannot_be_opened(tmp_path, capsys):
    path = write_study(tmp_path, storage="postgresql://nobody@127.0.0.1:1/none")
    code, err = _run_err(path, capsys)
    assert code == 2 and "storage" in err and "cannot open" in err


def test_search_space_that_conflicts_with_the_warmup(tmp_path, capsys):
    path = write_study(tmp_path, search_space={"momentum": {"float": [0.8, 0.99]}})
    code, err = _run_err(path, capsys)
    assert code == 2 and "search_space.momentum" in err and "warmup.hparams" in err


def test_non_forkable_key(tmp_path, capsys):
    path = write_study(tmp_path, search_space={"hidden": {"categorical": [16, 32]}})
    code, err = _run_err(path, capsys)
    assert code == 2 and "'hidden' cannot be forked" in err and "apply_hparams" in err


def test_resume_of_a_study_that_does_not_exist(tmp_path, capsys):
    code = main(["resume", write_study(tmp_path)])
    assert code == 2 and "run" in capsys.readouterr().err


def test_the_quickstart_study_through_the_cli(tmp_path, capsys):
    """The README's first command, on a copy of studies/quickstart.yaml: its fork tree sized
    from a smaller budget (3 full runs of half the epochs: 8 nodes of its 25)."""
    import yaml

    with open(os.path.join(ROOT, "studies", "quickstart.yaml")) as f:
        doc = yaml.safe_load(f)
    doc["task"] = os.path.join(ROOT, "examples", "digits.py") + ":DigitsMLP"
    doc["trials"].update(budget=3, epochs=doc["trials"]["epochs"] / 2)
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "study quickstart:" in out and "finished trials" in out and "disk in use" in out
    s = _session(str(path))
    trials = {t.number: t for t in s.study.get_trials()}
    assert s.attr("mode") == "tree" and 4 < len(trials) <= 10
    for t in trials.values():
        parent = t.user_attrs.get(ATTR + "parent_trial")
        if parent is not None:  # forked from its parent's final checkpoint
            final = trials[parent].user_attrs[ATTR + "final_checkpoint"]
            assert t.user_attrs[ATTR + "parent_checkpoint"] == final
    finals = [r for r in s.lineage.checkpoints(statuses=("committed",)) if r.kind == "final"]
    assert len(finals) <= doc["checkpoints"]["keep_best"]
    assert s.study.best_value > 0.9
    s.close()
    # the README's promise on its own quickstart: the winner's recipe retrains it bit for bit
    # (its rungs fall between batches: a replay that over-trained each segment differed)
    assert main(["replay", str(path)]) == 0
    assert "bitwise identical to its final checkpoint" in capsys.readouterr().out


def test_two_workers_share_one_study(tmp_path):
    """`--workers 2`: both workers join the study; together they finish it with one warm-up and
    no trial lost or run twice (which worker runs which trial is up to timing)."""
    path = write_study(tmp_path, trials={"n": 4, "epochs": 2, "eval_every": 0.5},
                       pruner={"name": "NopPruner"})  # fmt: skip
    cmd = [sys.executable, "-m", "hpsearch", "run", path, "--workers", "2", "--trials", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    s = _session(path)
    trials = s.study.get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs[ATTR + "parent_checkpoint"] for t in trials}) == 1
    attempts = s.lineage.attempts()
    assert len({a.pid for a in attempts if a.trial == WORKERS}) == 2  # both joined
    for t in trials:  # each trial ran once, by one worker
        assert [a.status for a in attempts if a.trial == t.number] == ["done"]
    assert len(s.lineage.checkpoints(kinds=("base",), statuses=("committed",))) == 1
    # seeded by each trial's own number: no two workers sampled with one seed
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 8
    # the summary is taken once the spawned worker is done too
    assert "study tiny: 8 finished trials (8 complete)" in proc.stdout
    s.close()


SLOW_EVAL = """
import time
from digits import DigitsMLP

class SlowOnce(DigitsMLP):
    calls = 0

    def evaluate(self, model, loader):
        SlowOnce.calls += 1
        if SlowOnce.calls == 2:  # in the warm-up or a trial: longer than trials.grace_s
            time.sleep(3.0)
        return super().evaluate(model, loader)
"""


def test_a_slow_evaluate_is_not_taken_over_while_its_worker_lives(tmp_path):
    """Heartbeats come from a thread: an evaluate() longer than grace_s does not make a live
    worker look dead, so no trial (and not the warm-up) is taken over or run twice."""
    (tmp_path / "slow.py").write_text(SLOW_EVAL)
    path = write_study(
        tmp_path, task=f"{tmp_path / 'slow.py'}:SlowOnce",
        warmup={"epochs": 0.5, "hparams": {"lr": 1e-2, "batch_size": 64, "hidden": 32,
                                           "dropout": 0.1, "weight_decay": 0.0}},
        trials={"n": 4, "epochs": 0.5, "eval_every": 0.5, "grace_s": 2, "heartbeat_s": 0.25},
        pruner={"name": "NopPruner"},
    )  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [os.path.join(ROOT, "examples"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    cmd = [sys.executable, "-m", "hpsearch", "run", path, "--workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "continued from" not in proc.stdout + proc.stderr
    s = _session(path)
    attempts = s.lineage.attempts()
    assert [a.status for a in attempts if a.trial == WARMUP] == ["done"]
    for t in s.study.get_trials():
        assert [a.status for a in attempts if a.trial == t.number] == ["done"]
    s.close()
