"""One of several workers dies mid-trial: another takes the trial over from the trial's own newest
checkpoint, and the study ends with every trial finished once. Driven by events (a trial is
mid-way with a committed checkpoint of its own), not by the clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from hpsearch.lineage import WORKERS
from hpsearch.search.session import Session
from hpsearch.testing import StudyPaths, Watch
from studyutil import write_study


@pytest.mark.parametrize("storage", ["runs/study.db", "runs/study.journal"])
def test_a_killed_worker_s_trial_is_taken_over_by_another(tmp_path, storage):
    """On SQLite, and on the journal storage (Optuna's study in a journal file, the lineage in
    the SQLite file beside it)."""
    path = write_study(
        tmp_path, name="killone", storage=storage,
        trials={"n": 4, "epochs": 1, "eval_every": 0.25},
        checkpoints={"every": 0.25, "keep_best": 4},
        pruner={"name": "NopPruner"},
    )  # fmt: skip
    cmd = [sys.executable, "-m", "hpsearch", "worker", path]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True) for _ in range(2)]  # fmt: skip
    pids = {w.pid for w in workers}
    paths = StudyPaths.of(path)
    watch = Watch(paths)
    seen: list[tuple[int, str, int]] = []

    def midway_in_a_worker(w: Watch) -> bool:
        found = w.midway(0.0)
        if found is None:
            return False
        trial, ckpt = found
        rows = w.query("select pid from hpsearch_attempts where study=? and trial=? and "
                       "status='running'", paths.name, trial)  # fmt: skip
        running = [pid for (pid,) in rows if pid in pids]
        if running:
            seen.append((trial, ckpt, running[0]))
        return bool(running)

    try:
        assert watch.until(workers[0], midway_in_a_worker, timeout_s=600)
        trial, ckpt, pid = seen[-1]
        os.kill(pid, signal.SIGKILL)
        survivor = next(w for w in workers if w.pid != pid)
        out, _ = survivor.communicate(timeout=600)
        assert survivor.returncode == 0, out
    finally:
        watch.close()
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()

    s = Session.open(path, create=False)
    try:
        trials = s.study.get_trials()
        assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
        attempts = [a for a in s.lineage.attempts(trial) if a.trial != WORKERS]
        assert [a.status for a in attempts] == ["dead", "done"]
        assert attempts[0].pid == pid and attempts[1].pid == survivor.pid
        # continued from a checkpoint of its own (the one seen, or one committed just after)
        resumed = s.lineage.get(attempts[1].resumed_from or "")
        assert resumed is not None and resumed.trial == trial
        assert resumed.step >= (s.lineage.get(ckpt) or resumed).step
        assert f"trial {trial}: continued from" in out
    finally:
        s.close()
