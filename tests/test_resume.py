"""Resume anything: a study SIGKILLed at 8 events ends identical to an uninterrupted one;
stale trials are taken over; Ctrl-C and SIGTERM stop cleanly; a crashed trial continues."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.search.records import PREFIX as ATTR
from hpsearch.search.session import Session
from hpsearch.testing import StudyPaths, Watch, kill_at_events, takeovers_after
from studyutil import ROOT, write_study

STUDY = {
    "warmup": {"epochs": 1, "hparams": {"lr": 1e-2, "dropout": 0.1, "batch_size": 64,
                                        "weight_decay": 1e-4, "hidden": 64}},
    "trials": {"n": 10, "epochs": 1.5, "eval_every": 0.25},
    # about 50 checkpoints and 30 reports in all: enough events for the kills
    "checkpoints": {"every": 0.125, "keep_best": 100},
}  # fmt: skip
# the same over a fork tree: 12 nodes, 8 epochs of training in all (about 60 checkpoints)
TREE = {
    "warmup": None,
    "tree": {"roots": 4, "rungs": [0.25, 0.5, 1.0], "keep": 0.5, "children": 2,
             "hparams": {"weight_decay": 1e-4, "hidden": 64}},
    "trials": {"epochs": 2, "eval_every": 0.25},
    "schedule": {"name": "wsd", "decay": 0.25},
    "checkpoints": {"every": 0.125, "keep_best": 100},
}  # fmt: skip
# the tree on the journal storage: Optuna's study in a journal file, the lineage beside it
TREE_JOURNAL = {**TREE, "storage": "runs/kc/study.journal"}
STUDIES = {"base": STUDY, "tree": TREE, "tree-journal": TREE_JOURNAL}
# 1 of each event per strategy; each run is a fresh process (about 3 s of start-up), so this is
# the test's cost (the suite must stay under 10 minutes on 2 cores);
# `benchmarks/fault_campaign.py --kills N` runs longer campaigns (RESULTS.md: 20 event kills,
# all identical)
KILLS = 4


def _hpsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpsearch", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run(path: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_hpsearch("run", path, *extra), capture_output=True, text=True,
                          env=_env(), timeout=300)  # fmt: skip


def _db(path: str) -> str:
    return os.path.join(os.path.dirname(path), "runs", "kc", "study.db")


def _results(path: str) -> dict[int, tuple]:
    s = Session.open(path, create=False)
    out = {}
    for t in s.study.get_trials():
        weights = None
        final = t.user_attrs.get(ATTR + "final_checkpoint")
        if t.state == TrialState.COMPLETE:
            weights = s.store.load(final).tensors["model"]
        out[t.number] = (t.state, t.params, t.value, dict(t.intermediate_values), weights)
    s.close()
    return out


def _same(a: dict[int, tuple], b: dict[int, tuple]) -> None:
    assert sorted(a) == sorted(b)
    for n in a:
        sa, pa, va, ia, wa = a[n]
        sb, pb, vb, ib, wb = b[n]
        assert (sa, pa, va, ia) == (sb, pb, vb, ib), f"trial {n} differs"
        if wa is not None:
            assert all(torch.equal(wa[k], wb[k]) for k in wa), f"trial {n}'s weights differ"


def _reference(tmp_path_factory, study: dict) -> dict[int, tuple]:
    """The uninterrupted study, run in this process: a fresh one would cost ~4 s of start-up
    (torch, and torch._dynamo on the first optimizer), and the study is the same in either."""
    path = write_study(tmp_path_factory.mktemp("ref"), name="kc", **study)
    assert main(["run", path]) == 0
    return _results(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, tuple]:
    return _reference(tmp_path_factory, STUDY)


@pytest.mark.parametrize("strategy", sorted(STUDIES))
def test_sigkill_campaign_ends_identical_to_an_uninterrupted_study(
    tmp_path, tmp_path_factory, request, strategy
):
    study = STUDIES[strategy]
    if strategy == "base":
        reference = request.getfixturevalue("reference")  # shared with the tests below
    else:
        reference = _reference(tmp_path_factory, study)
    path = write_study(tmp_path, name="kc", **study)
    # each kill lands right after an event of the run (its first commit, save, report or
    # deletion), so what it proves does not depend on how fast the machine is
    kills = kill_at_events(_hpsearch("run", path), StudyPaths.of(path), KILLS, random.Random(7),
                           most=1, env=_env())  # fmt: skip
    assert len(kills) == KILLS, f"only {len(kills)} kills before the study finished"
    modes = {e: sum(k.event == e for k in kills) for e in ("commit", "save", "report", "gc")}
    assert modes == {"commit": 1, "save": 1, "report": 1, "gc": 1}
    forced = [k for k in kills if k.trial is not None]
    # every `commit` kill leaves a trial mid-way with a checkpoint of its own: by construction
    assert all(k.trial is not None for k in kills if k.event == "commit")
    for _ in range(5):  # restart until it finishes
        done = _run(path)
        assert done.returncode == 0, done.stderr
        s = Session.open(path, create=False)
        finished = sum(t.state.is_finished() for t in s.study.get_trials())
        s.close()
        if finished >= len(reference):
            break

    got = _results(path)
    assert all(state in (TrialState.COMPLETE, TrialState.PRUNED) for state, *_ in got.values())
    _same(reference, got)

    # each takeover continued from the newest checkpoint its trial had committed by then
    s = Session.open(path, create=False)
    rows = s.lineage.checkpoints()
    assert takeovers_after(kills, s.lineage.attempts(), rows) == []
    takeovers = 0
    for a in s.lineage.attempts():
        if a.trial < 0 or a.resumed_from is None:
            continue
        mine = [r for r in rows if r.trial == a.trial and r.created < a.started
                and r.status in ("committed", "deleted", "deleting")]  # fmt: skip
        if mine:
            takeovers += 1
            newest = max(mine, key=lambda r: r.step)
            assert a.resumed_from == newest.id, f"trial {a.trial} lost work"
    interval = round(0.125 * 1438)
    hits = sum(k.hit for k in kills if k.event == "save")
    print(f"\nkill campaign ({strategy}): {len(kills)} SIGKILLs {modes} ({hits} inside a save), "
          f"{len(got)} trials, {len(forced)} kills left a trial mid-way, {takeovers} trials "
          f"continued from their own checkpoint; recomputed work per kill <= {interval} samples "
          "(one checkpoint interval)")  # fmt: skip
    assert takeovers >= len(forced) >= 2
    assert s.store.leftovers() == []
    s.close()


def _start_and_wait_for_trial(path: str) -> subprocess.Popen:
    started = time.time()
    proc = subprocess.Popen(_hpsearch("run", path), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    watch = Watch(StudyPaths.of(path))
    # a checkpoint of a trial committed by this run (an earlier run's do not count)
    sql = "select 1 from hpsearch_checkpoints where trial>=1 and status='committed' and created>?"
    assert watch.until(proc, lambda w: w.query(sql, started), 300)
    watch.close()
    return proc


def test_ctrl_c_and_sigterm_stop_cleanly_and_the_next_run_continues(tmp_path, reference):
    """Ctrl-C, then SIGTERM on the run that continued: each stops cleanly with the trial's state
    checkpointed, each next run continues it, and the study ends as an uninterrupted one."""
    path = write_study(tmp_path, name="kc", **STUDY)
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = _start_and_wait_for_trial(path)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Run the same command again" in err
        s = Session.open(path, create=False)
        running = [t for t in s.study.get_trials() if t.state == TrialState.RUNNING]
        assert len(running) == 1
        # its state at the stop is checkpointed, and no worker claims it any more
        rows = s.lineage.checkpoints(trial=running[0].number, statuses=("committed",))
        assert rows and s.lineage.current_attempt(running[0].number) is None
        s.close()
    done = _run(path)
    assert done.returncode == 0, done.stderr
    assert f"trial {running[0].number}: continued from step" in done.stdout
    _same(reference, _results(path))


def test_stale_trial_of_a_dead_worker_elsewhere_is_taken_over(tmp_path, reference):
    doc = {**STUDY, "trials": {**STUDY["trials"], "heartbeat_s": 0.5, "grace_s": 3.0}}
    path = write_study(tmp_path, name="kc", **doc)
    proc = _start_and_wait_for_trial(path)
    proc.kill()
    proc.wait()
    db = _db(path)
    # make the dead worker look like one on another machine whose heartbeat is fresh
    con = sqlite3.connect(db)
    con.execute("update hpsearch_attempts set host='elsewhere', heartbeat=? "
                "where status='running'", (time.time() + 3600,))  # fmt: skip
    con.commit()
    s = Session.open(path, create=False)
    stuck = [t.number for t in s.study.get_trials() if t.state == TrialState.RUNNING]
    s.close()
    assert len(stuck) == 1
    # a live-looking worker elsewhere: its trial is left alone, the rest of the study runs
    first = _run(path)
    assert first.returncode == 0, first.stderr
    s = Session.open(path, create=False)
    assert s.study.trials[stuck[0]].state == TrialState.RUNNING
    s.close()
    # its heartbeat goes stale: the next run takes the trial over and finishes it
    con.execute("update hpsearch_attempts set heartbeat=? where host='elsewhere'",
                (time.time() - 60,))  # fmt: skip
    con.commit()
    con.close()
    second = _run(path)
    assert second.returncode == 0, second.stderr
    assert f"trial {stuck[0]}: continued from step" in second.stdout
    got = _results(path)
    assert got[stuck[0]][0] in (TrialState.COMPLETE, TrialState.PRUNED)
    # it was continued, not restarted: what it reported before the kill is the reference's
    # (its end may differ: the pruner now compares it with trials that finished meanwhile)
    _, params, _, inter, _ = got[stuck[0]]
    assert params == reference[stuck[0]][1]
    assert inter[min(inter)] == reference[stuck[0]][3][min(inter)]


def test_a_crashed_trial_continues_from_its_checkpoint_in_the_same_run(tmp_path):
    flag = tmp_path / "broken"
    task = tmp_path / "flaky.py"
    task.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'examples')!r})\n"
        "from digits import DigitsMLP\n"
        "class Flaky(DigitsMLP):\n"
        "    calls = 0\n"
        "    def optimizer(self, model, hparams):\n"
        "        self.opt = super().optimizer(model, hparams)\n"
        "        return self.opt\n"
        "    def loss(self, model, batch):\n"
        f"        flag = {str(flag)!r}\n"
        "        if os.path.exists(flag) and model.training:\n"
        "            if self.opt.param_groups[0]['lr'] == float(open(flag).read()):\n"
        "                self.calls += 1\n"
        "                if self.calls == 15:  # after its first checkpoint, in its first epoch\n"
        "                    raise RuntimeError('a bug in the task')\n"
        "        return super().loss(model, batch)\n"
    )
    doc = {**STUDY, "trials": {**STUDY["trials"], "n": 4}, "pruner": {"name": "NopPruner"},
           "task": f"{task}:Flaky"}  # fmt: skip
    ref_path = write_study(tmp_path / "ref", name="kc", **doc)
    assert main(["run", ref_path]) == 0
    reference = _results(ref_path)

    flag.write_text(repr(reference[2][1]["lr"]))  # the third trial will crash, once
    path = write_study(tmp_path, name="kc", **doc)
    run = _run(path)  # the same run continues it (trials.retries) and goes on
    assert run.returncode == 0, run.stderr
    assert "trial 2: failed: RuntimeError: a bug in the task (the task's code: " in run.stdout
    assert "retrying it from its newest checkpoint" in run.stdout
    assert "retry of trial 2" in run.stdout
    s = Session.open(path, create=False)
    trials = s.study.get_trials()
    failed = trials[2]
    assert failed.state == TrialState.FAIL
    assert "a bug in the task" in failed.user_attrs[ATTR + "fail_reason"]
    retry = [t for t in trials if t.user_attrs.get(ATTR + "retry_of") == 2]
    assert len(retry) == 1
    retry = retry[0]
    # it continued from trial 2's checkpoint, not from the base or from scratch
    parent = s.lineage.get(retry.user_attrs[ATTR + "parent_checkpoint"])
    assert parent.trial == 2 and parent.step > s.attr("warmup_steps")
    assert retry.params == failed.params
    # and ended exactly where the uninterrupted trial 2 ended
    assert (retry.state, retry.value) == (reference[2][0], reference[2][2])
    assert dict(retry.intermediate_values) == reference[2][3]
    weights = s.store.load(retry.user_attrs[ATTR + "final_checkpoint"]).tensors["model"]
    assert all(torch.equal(weights[k], reference[2][4][k]) for k in weights)
    # the plot draws the failed attempt and its continuation as one branch
    from hpsearch.report.plot import branch_plot_data
    from hpsearch.report.status import study_view

    data = branch_plot_data(study_view(s))
    branch = data.branch(retry.number)
    assert 2 in branch.attempts and data.branch(2) is branch
    assert len(data.branches) == len(trials) - 1
    s.close()
    assert optuna.load_study(study_name="kc", storage=f"sqlite:///{_db(path)}")
