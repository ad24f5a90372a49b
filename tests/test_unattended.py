"""Unattended runs: a bad checkpoint means "try the next source", a failing trial is retried in the
same run and the study goes on, a damaged database or an edited study file is refused or skipped
cleanly, and `verify` fails whenever the study could not continue.

Studies here are tiny (half-epoch warm-ups, a few trials) and run in-process through the CLI's
`main`; failures are driven by hyperparameter values and files in the temp dir, never by chance.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
import torch
import yaml
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.search.records import PREFIX as ATTR
from hpsearch.search.runner import run_study
from hpsearch.search.session import Session
from studyutil import ROOT, write_study

HP = {"lr": 1e-2, "dropout": 0.1, "batch_size": 64, "weight_decay": 1e-4, "hidden": 64}
LRS = [1e-3, 2e-3, 3e-3]
FAST: dict[str, Any] = {
    "warmup": {"epochs": 0.25, "hparams": HP},
    "trials": {"n": 2, "epochs": 0.25, "eval_every": 0.125},
    "checkpoints": {"every": 0.125, "keep_best": 5},
    "search_space": {"lr": {"categorical": LRS}},
    "sampler": {"name": "GridSampler"},
    "pruner": {"name": "NopPruner"},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models on a shared machine: more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _session(path: str) -> Session:
    return Session.open(path, create=False)


def _trials(path: str) -> list[Any]:
    s = _session(path)
    try:
        return s.study.get_trials()
    finally:
        s.close()


def _flaky_task(tmp_path: Any) -> str:
    """A digits task that misbehaves as the file $HPSEARCH_TEST_TROUBLE says: {"lr": value or
    null (any trial), "what": "raise" | "exit" | "oom" | "enospc", "at": the training call that
    misbehaves, or 0 for every call}. Deterministic: a counter per task object (one per run),
    matched on the optimizer's lr; the warm-up is never touched."""
    task = tmp_path / "flaky.py"
    task.write_text(
        "import errno, json, os, sys\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'examples')!r})\n"
        "from digits import DigitsMLP\n"
        "TROUBLE = os.environ.get('HPSEARCH_TEST_TROUBLE', '/nonexistent')\n"
        f"WARMUP_LR = {HP['lr']!r}\n"
        "class Flaky(DigitsMLP):\n"
        "    calls = 0\n"
        "    def optimizer(self, model, hparams):\n"
        "        self.opt = super().optimizer(model, hparams)\n"
        "        return self.opt\n"
        "    def loss(self, model, batch):\n"
        "        if os.path.exists(TROUBLE) and model.training:\n"
        "            t = json.load(open(TROUBLE))\n"
        "            lr = self.opt.param_groups[0]['lr']\n"
        "            if lr == t['lr'] or (t['lr'] is None and lr != WARMUP_LR):\n"
        "                self.calls += 1\n"
        "                if t['at'] in (0, self.calls):\n"
        "                    if t['what'] == 'exit':\n"
        "                        raise SystemExit('killed')\n"
        "                    if t['what'] == 'oom':\n"
        "                        raise MemoryError('out of memory (test)')\n"
        "                    if t['what'] == 'enospc':\n"
        "                        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "                    raise RuntimeError('a bug in the task')\n"
        "        return super().loss(model, batch)\n"
    )
    return f"{task}:Flaky"


@pytest.fixture
def trouble(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`trouble(what, lr=..., at=...)` makes the flaky task misbehave; returns the file (unlink
    it to fix the task)."""
    path = tmp_path / "trouble.json"
    monkeypatch.setenv("HPSEARCH_TEST_TROUBLE", str(path))

    def make(what: str, *, lr: float | None, at: int) -> Any:
        path.write_text(json.dumps({"lr": lr, "what": what, "at": at}))
        return path

    return make


# -- 4. a checkpoint that passes its hashes but does not fit ------------------------------------


def _forge(session: Session, ckpt_id: str, change: Callable[[dict, dict], None]) -> None:
    """Replace a committed checkpoint by one saved through the store API (so its hashes are
    right) whose tensors or state are wrong."""
    loaded = session.store.load(ckpt_id)
    tensors = {g: {k: v.clone() for k, v in d.items()} for g, d in loaded.tensors.items()}
    state = json.loads(json.dumps(loaded.state))
    change(tensors, state)
    session.store.delete(ckpt_id)
    session.store.save(tensors, state, meta=dict(loaded.info.meta), ckpt_id=ckpt_id)


def _w(t: dict) -> torch.Tensor:
    return t["model"]["0.weight"]


def _set(t: dict, value: torch.Tensor) -> None:
    t["model"]["0.weight"] = value


def _nan(t: dict) -> None:
    w = _w(t).clone()
    w[0, 0] = math.nan
    _set(t, w)


FORGERIES: dict[str, Callable[[dict, dict], None]] = {
    "wrong-shape": lambda t, s: _set(t, _w(t)[:-1].clone()),
    "extra-key": lambda t, s: t["model"].__setitem__("extra.weight", torch.zeros(3)),
    "int8": lambda t, s: _set(t, _w(t).to(torch.int8)),
    "float64": lambda t, s: _set(t, _w(t).double()),
    "garbage-groups": lambda t, s: s["optimizer"]["param_groups"][0].__setitem__("lr", "fast"),
    "version-99": lambda t, s: s.__setitem__("version", 99),
    "non-finite": lambda t, s: _nan(t),
}


@pytest.fixture(scope="module")
def one_trial_study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished study with one trial, copied by each test that damages it."""
    root = tmp_path_factory.mktemp("ref")
    path = write_study(root, name="fb", task=_flaky_task(root),
                       **{**FAST, "trials": {**FAST["trials"], "n": 1}})  # fmt: skip
    assert main(["run", path]) == 0
    return path


def _copy(path: str, tmp_path: Any) -> str:
    dst = tmp_path / "study"
    shutil.copytree(os.path.dirname(path), dst)
    return str(dst / os.path.basename(path))


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_base_is_set_aside_and_the_study_finishes(one_trial_study, tmp_path, capsys,
                                                           forgery):  # fmt: skip
    path = _copy(one_trial_study, tmp_path)
    s = _session(path)
    old_base = s.attr("base_checkpoint")
    _forge(s, old_base, FORGERIES[forgery])
    s.close()
    capsys.readouterr()
    assert main(["run", path, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert f"the base checkpoint '{old_base}' cannot be used" in out
    s = _session(path)
    new_base = s.attr("base_checkpoint")
    assert new_base != old_base and s.store.exists(new_base)
    assert s.lineage.get(old_base).status == "unusable"  # set aside, not deleted
    assert s.store.exists(old_base)
    trials = s.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[1].user_attrs[ATTR + "parent_checkpoint"] == new_base
    # the warm-up is seeded: running it again made the same base as the first time
    a = s.store.load(new_base).tensors["model"]
    assert all(torch.isfinite(v).all() for v in a.values())
    assert a["0.weight"].dtype == torch.float32 and a["0.weight"].shape == (64, 64)
    s.close()
    if forgery == "non-finite":
        assert "CheckpointCorrupt" in out and "non-finite" in out  # damage, not divergence


def test_a_forged_trial_checkpoint_falls_back_to_its_parent(one_trial_study, tmp_path, capsys,
                                                            trouble):  # fmt: skip
    path = _copy(one_trial_study, tmp_path)
    trouble("exit", lr=None, at=4)  # a kill after the trial's first checkpoint
    with pytest.raises(SystemExit):
        run_study(path, trials=2)
    (tmp_path / "trouble.json").unlink()
    s = _session(path)
    crashed = s.study.get_trials()[1]
    assert crashed.state == TrialState.RUNNING
    attempt = s.lineage.current_attempt(crashed.number)
    s.lineage.finish_attempt(attempt.token, "dead")  # as a stale takeover would find it
    rows = s.lineage.checkpoints(trial=crashed.number, statuses=("committed",))
    assert rows, "the crash came after the trial's first checkpoint"
    newest = max(rows, key=lambda r: r.step).id
    _forge(s, newest, FORGERIES["wrong-shape"])
    s.close()
    capsys.readouterr()
    assert main(["run", path, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {newest} cannot be used" in out and "trying the next source" in out
    trials = _trials(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[1].params == crashed.params
    assert trials[1].user_attrs[ATTR + "parent_checkpoint"] == trials[0].user_attrs[
        ATTR + "parent_checkpoint"]  # forked again from the base  # fmt: skip


# -- 5. verify fails when the study cannot continue ----------------------------------------------


def _base_dir(path: str) -> str:
    s = _session(path)
    try:
        return os.path.join(s.store.url, s.attr("base_checkpoint"))
    finally:
        s.close()


def test_verify_fails_when_the_base_manifest_is_gone(one_trial_study, tmp_path, capsys):
    path = _copy(one_trial_study, tmp_path)
    assert main(["verify", path]) == 0
    os.unlink(os.path.join(_base_dir(path), "manifest.json"))
    capsys.readouterr()
    assert main(["verify", path]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and ", 0 failed" not in out


def test_verify_fails_on_a_newer_format_manifest(one_trial_study, tmp_path, capsys):
    path = _copy(one_trial_study, tmp_path)
    manifest = os.path.join(_base_dir(path), "manifest.json")
    with open(manifest) as f:
        body = json.load(f)
    body["format_version"] = body["format_version"] + 1
    with open(manifest, "w") as f:
        json.dump(body, f)
    capsys.readouterr()
    assert main(["verify", path]) == 1
    assert "CORRUPT" in capsys.readouterr().out


# -- 6. invalid ids in the database ----------------------------------------------------------------


def _db(path: str) -> str:
    return os.path.join(os.path.dirname(path), "runs", "fb", "study.db")


def test_an_invalid_id_row_is_skipped_by_run_gc_and_failed_by_verify(one_trial_study, tmp_path,
                                                                       capsys):  # fmt: skip
    path = _copy(one_trial_study, tmp_path)
    with sqlite3.connect(_db(path)) as c:
        c.execute(
            "INSERT INTO hpsearch_checkpoints (id, study, trial, attempt, kind, parent, step, "
            "samples, epoch, nbytes, status, created, updated) VALUES "
            "('../../escape', 'fb', 0, NULL, 'trial', NULL, 1, 1, 0.1, 0, 'pending', 1, 1)"
        )
    capsys.readouterr()
    assert main(["gc", path]) == 0
    assert main(["run", path, "--trials", "2"]) == 0
    cap = capsys.readouterr()
    assert "skipping a checkpoint row" in cap.err and "invalid checkpoint id" in cap.err
    assert [t.state for t in _trials(path)] == [TrialState.COMPLETE] * 2
    assert main(["verify", path]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_a_corrupted_base_attribute_never_costs_the_real_base(one_trial_study, tmp_path, capsys):
    path = _copy(one_trial_study, tmp_path)
    s = _session(path)
    base = s.attr("base_checkpoint")
    s.set_attr("base_checkpoint", "../../x")
    s.close()
    assert main(["gc", path]) == 0  # GC keeps every base while the attribute names none
    s = _session(path)
    assert s.store.exists(base)
    s.close()
    capsys.readouterr()
    assert main(["run", path, "--trials", "2"]) == 0
    assert "cannot be used" in capsys.readouterr().out
    s = _session(path)
    assert s.attr("base_checkpoint") == base and s.store.exists(base)  # adopted again
    trials = s.study.get_trials()
    assert [t.user_attrs[ATTR + "parent_checkpoint"] for t in trials] == [base, base]
    s.close()


# -- 7. a crash between ask and sampling -----------------------------------------------------------


def test_a_trial_asked_but_never_sampled_is_sampled_on_takeover(one_trial_study, tmp_path, capsys):
    path = _copy(one_trial_study, tmp_path)
    s = _session(path)
    s.study.ask()  # the worker died right after this
    s.close()
    capsys.readouterr()
    assert main(["run", path, "--trials", "2"]) == 0
    assert "had no params" in capsys.readouterr().out
    trials = _trials(path)
    assert len(trials) == 2 and trials[1].state == TrialState.COMPLETE
    assert set(trials[1].params) == {"lr"} and trials[1].params["lr"] in LRS
    assert trials[1].params["lr"] != trials[0].params["lr"]  # the grid went on


# -- 8. an edited study file under an existing study --------------------------------------------


def _edit(path: str, change: Callable[[dict], None]) -> None:
    with open(path) as f:
        doc = yaml.safe_load(f)
    change(doc)
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)


def test_an_edited_warmup_is_refused_with_what_changed(one_trial_study, tmp_path, capsys):
    path = _copy(one_trial_study, tmp_path)

    def change(doc: dict) -> None:
        doc["warmup"]["hparams"]["dropout"] = 0.3
        doc["warmup"]["hparams"]["hidden"] = 96

    _edit(path, change)
    capsys.readouterr()
    assert main(["run", path, "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "warmup.hparams.dropout: 0.1 -> 0.3" in err
    assert "warmup.hparams.hidden: 64 -> 96" in err
    assert "a new `name`" in err and "or revert the change" in err
    assert "Traceback" not in err
    assert [t.state for t in _trials(path)] == [TrialState.COMPLETE]  # nothing left RUNNING


def test_a_first_run_that_trained_nothing_binds_no_settings(tmp_path, capsys):
    fast = {**FAST, "trials": {**FAST["trials"], "n": 1}}
    path = write_study(tmp_path, name="fr", objective={"metric": "nope", "direction": "maximize"},
                       **fast)  # fmt: skip
    assert main(["run", path]) == 2  # found before any training
    assert "objective.metric" in capsys.readouterr().err

    def fix(doc: dict) -> None:
        doc["objective"]["metric"] = "val_accuracy"
        doc["warmup"]["hparams"]["dropout"] = 0.2  # and retune while at it

    _edit(path, fix)
    assert main(["run", path]) == 0
    s = _session(path)
    assert s.attr("fingerprint")["warmup.hparams.dropout"] == 0.2
    s.close()


def test_a_study_without_a_fingerprint_adopts_one(one_trial_study, tmp_path):
    path = _copy(one_trial_study, tmp_path)
    s = _session(path)
    assert s.attr("fingerprint")["warmup.hparams.hidden"] == 64
    s.set_attr("fingerprint", None)  # as a study made by the previous version
    s.close()
    assert main(["run", path, "--trials", "2"]) == 0
    s = _session(path)
    assert s.attr("fingerprint")["warmup.hparams.dropout"] == 0.1
    s.close()


# -- 9. failing trials in an unattended run --------------------------------------------------------


def _trials_section(path: str, **keys: Any) -> None:
    _edit(path, lambda doc: doc["trials"].update(keys))  # none of these is in the fingerprint


def test_a_failing_trial_is_retried_in_the_same_run(one_trial_study, tmp_path, capsys, trouble):
    path = _copy(one_trial_study, tmp_path)
    trouble("raise", lr=None, at=4)  # once, after the run's first trial checkpointed
    capsys.readouterr()
    assert main(["run", path, "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "trial 1: failed: RuntimeError: a bug in the task (the task's code: " in out
    assert "retrying it from its newest checkpoint" in out
    trials = _trials(path)
    assert trials[1].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get(ATTR + "retry_of") == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == trials[1].params
    # it continued from the failed attempt's checkpoint, not from the base
    parent = _session(path).lineage.get(retry[0].user_attrs[ATTR + "parent_checkpoint"])
    assert parent.trial == 1
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_a_retry_left_unasked_by_a_dead_worker_is_asked_as_the_retry(
    one_trial_study, tmp_path, capsys, trouble, monkeypatch
):
    """A worker enqueues a failed trial's retry, then dies before asking for it: the next run
    asks it as that retry (from the failed attempt's checkpoint), not as a new trial."""
    from hpsearch.search import asking
    from hpsearch.search.control import Interrupted

    path = _copy(one_trial_study, tmp_path)
    flaky = trouble("raise", lr=None, at=4)  # trial 1 fails once, after it checkpointed
    real = asking.ask_waiting

    def die(ctx: Any, tid: int) -> Any:
        raise Interrupted("killed between the retry's enqueue and its ask")

    monkeypatch.setattr(asking, "ask_waiting", die)
    assert main(["run", path, "--trials", "3"]) == 130
    trials = _trials(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].user_attrs[ATTR + "retry_of"] == 1
    monkeypatch.setattr(asking, "ask_waiting", real)
    flaky.unlink()  # the task is fixed
    capsys.readouterr()
    assert main(["run", path, "--trials", "3"]) == 0
    assert "trial 2: the retry of trial 1, left unasked" in capsys.readouterr().out
    trials = _trials(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL] + [
        TrialState.COMPLETE
    ] * 2
    assert trials[2].params == trials[1].params
    parent = _session(path).lineage.get(trials[2].user_attrs[ATTR + "parent_checkpoint"])
    assert parent.trial == 1  # continued from the failed attempt's checkpoint, not the base
    assert [t.user_attrs.get(ATTR + "retry_of") for t in trials] == [None, None, 1, None]


def test_max_failures_stops_the_study(one_trial_study, tmp_path, capsys, trouble):
    path = _copy(one_trial_study, tmp_path)
    _trials_section(path, retries=0, max_failures=2)
    trouble("raise", lr=None, at=0)  # every trial, every step
    capsys.readouterr()
    assert main(["run", path, "--trials", "3"]) == 1
    err = capsys.readouterr().err
    assert "2 trials failed for good in this run (trials.max_failures=2)" in err
    assert [t.state for t in _trials(path)] == [TrialState.COMPLETE] + [TrialState.FAIL] * 2


def test_out_of_memory_fails_that_trial_only(one_trial_study, tmp_path, trouble):
    path = _copy(one_trial_study, tmp_path)
    trouble("oom", lr=None, at=2)  # the run's first trial only
    # the study goes on; the run says (exit 1) that a trial failed for good
    assert main(["run", path, "--trials", "3"]) == 1
    trials = _trials(path)
    assert len(trials) == 3  # not retried: the same params need the same memory
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs[ATTR + "fail_kind"] == "oom"
    assert [t.state for t in trials if t.number != 1] == [TrialState.COMPLETE] * 2


def test_a_full_disk_stops_the_study_and_spares_the_trials_retries(one_trial_study, tmp_path,
                                                                    capsys, trouble):  # fmt: skip
    path = _copy(one_trial_study, tmp_path)
    full = trouble("enospc", lr=None, at=4)
    capsys.readouterr()
    assert main(["run", path, "--trials", "2"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "not the trial's fault" in err
    trials = _trials(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING]  # resumable
    full.unlink()  # space freed
    assert main(["run", path, "--trials", "2"]) == 0
    trials = _trials(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert not any(t.user_attrs.get(ATTR + "retry_of") is not None for t in trials)


# -- 10. no prune at the final evaluation ----------------------------------------------------------


def test_no_prune_on_the_final_report(one_trial_study, tmp_path):
    # one evaluation per trial, at its end; a pruner that prunes everything it is asked about
    path = _copy(one_trial_study, tmp_path)
    _trials_section(path, eval_every=0.25)

    def pruner(doc: dict) -> None:
        doc["pruner"] = {"name": "ThresholdPruner", "lower": 2.0}

    _edit(path, pruner)
    assert main(["run", path, "--trials", "3"]) == 0
    trials = _trials(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    s = _session(path)
    assert all(s.store.exists(t.user_attrs[ATTR + "final_checkpoint"]) for t in trials)
    s.close()


def test_max_failures_must_be_positive(tmp_path, capsys):
    path = write_study(tmp_path, name="mv", trials={**FAST["trials"], "max_failures": 0})
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert "trials.max_failures: must be an integer >= 1, got 0" in err
