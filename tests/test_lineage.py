"""The checkpoint tree's tables: attempts, take-overs, tokens, claims; and a worker that was
wrongly declared dead, which must not commit over the one that took its trial over."""

from __future__ import annotations

import os
import sqlite3
import time

from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.lineage import Lineage, attempt_is_stale
from hpsearch.search.session import Session
from studyutil import ROOT, write_study


def test_attempts_take_over_and_tokens(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    lin = Lineage(url, "s")
    a = lin.start_attempt(3)
    assert lin.owns(a) and lin.heartbeat(a, steps=5)
    assert lin.current_attempt(3).token == a
    assert lin.take_over(3, None, resumed_from=None) is None  # someone runs it
    b = lin.take_over(3, a, resumed_from="ck-x")
    assert b is not None and lin.current_attempt(3).token == b
    # two workers that both saw `a` as stale: only one wins
    assert lin.take_over(3, a, resumed_from=None) is None
    # the loser, or `a` itself if it was only slow, can no longer commit
    assert not lin.owns(a) and not lin.heartbeat(a, steps=6)
    assert lin.owns(b)
    assert lin.claim("retry:3") and not lin.claim("retry:3")
    assert Lineage(url, "other").claim("retry:3")  # claims are per study
    # a running attempt of a process on this host that is gone is stale at once
    row = lin.current_attempt(3)
    assert not attempt_is_stale(row, grace_s=60)
    dead = row.__class__(**{**row.__dict__, "pid": 2**22 + 12345})
    assert attempt_is_stale(dead, grace_s=60)
    old = row.__class__(**{**row.__dict__, "host": "elsewhere", "heartbeat": time.time() - 61})
    assert attempt_is_stale(old, grace_s=60)
    lin.close()


def test_a_worker_declared_dead_does_not_commit(tmp_path, capsys):
    """While trial 1 trains, "another worker" takes it over (as after a missed heartbeat). The
    first worker notices at its next checkpoint (its token is no longer the trial's), stops that
    trial without telling Optuna or writing a checkpoint for it, and goes on with the study."""
    db = tmp_path / "runs" / "lost" / "study.db"
    task = tmp_path / "hijacked.py"
    task.write_text(
        "import os, sqlite3, sys, time, secrets\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'examples')!r})\n"
        "from digits import DigitsMLP\n"
        "class Hijacked(DigitsMLP):\n"
        "    done = False\n"
        "    def loss(self, model, batch):\n"
        "        if not self.done and model.training:\n"
        f"            con = sqlite3.connect({str(db)!r}, timeout=30)\n"
        '            row = con.execute("select token, study from hpsearch_attempts where "\n'
        "                \"trial=1 and status='running'\").fetchone()\n"
        "            if row:\n"
        "                self.done = True\n"
        "                con.execute(\"update hpsearch_attempts set status='dead' \"\n"
        '                            "where token=?", (row[0],))\n'
        '                con.execute("insert into hpsearch_attempts values "\n'
        "                    \"(?, ?, 1, 'elsewhere', 1, 'running', ?, ?, 0, 0, 0, NULL)\",\n"
        "                    (secrets.token_hex(8), row[1], time.time(), time.time() + 3600))\n"
        "                con.commit()\n"
        "            con.close()\n"
        "        return super().loss(model, batch)\n"
    )
    path = write_study(tmp_path, name="lost", task=f"{task}:Hijacked",
                       trials={"n": 3, "epochs": 1, "eval_every": 0.25},
                       pruner={"name": "NopPruner"})  # fmt: skip
    assert main(["run", path]) == 0
    assert "trial 1: another worker took this trial over" in capsys.readouterr().out
    s = Session.open(path, create=False)
    trials = s.study.get_trials()
    assert trials[1].state == TrialState.RUNNING  # left to the worker that took it
    assert s.lineage.checkpoints(trial=1, statuses=("committed",)) == []
    assert s.lineage.current_attempt(1).host == "elsewhere"
    # the study went on: the trial the other worker runs counts toward the 3
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING,
                                         TrialState.COMPLETE]  # fmt: skip
    s.close()
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from hpsearch_attempts where trial=1").fetchone()[0] == 2
    con.close()
