"""Garbage collection by lineage: the rules as a pure function, and a real kill in the middle."""

from __future__ import annotations

import sys

import yaml

from hpsearch.cli import main
from hpsearch.lineage import WARMUP, CheckpointRow
from hpsearch.lineage.gc import TrialFacts, collectable
from hpsearch.search.scheduler.fork_from_base import base_pins
from hpsearch.search.session import Session
from hpsearch.testing.points import kill_at_point
from studyutil import write_study


def _row(id: str, trial: int, kind: str, step: int, status: str = "committed") -> CheckpointRow:
    return CheckpointRow(id, "s", trial, None, kind, None, step, step * 10, step / 10, 100,
                         status, float(step), float(step))  # fmt: skip


def test_rules():
    rows = [
        _row("w1", WARMUP, "warmup", 1),
        _row("base", WARMUP, "base", 2),
        _row("orphan-base", WARMUP, "base", 2),  # a base committed but never adopted
        _row("r1", 0, "trial", 3), _row("r2", 0, "trial", 4),          # running
        _row("p1", 1, "trial", 3),                                     # pruned
        _row("c1", 2, "trial", 3), _row("c2", 2, "final", 4),          # complete, best
        _row("d1", 3, "final", 4),                                     # complete, worse
        _row("f1", 4, "trial", 3), _row("f2", 4, "trial", 4),          # failed, may continue
        _row("x1", 5, "trial", 3),                                     # failed for good
        _row("w", 6, "trial", 3, status="pending"),                    # being written
        _row("z", 7, "trial", 3, status="deleting"),                   # interrupted deletion
    ]  # fmt: skip
    facts = {
        0: TrialFacts(0, "RUNNING"),
        1: TrialFacts(1, "PRUNED", 0.5),
        2: TrialFacts(2, "COMPLETE", 0.9),
        3: TrialFacts(3, "COMPLETE", 0.8),
        4: TrialFacts(4, "FAIL", retryable=True),
        5: TrialFacts(5, "FAIL"),
        6: TrialFacts(6, "RUNNING"),
        7: TrialFacts(7, "PRUNED"),
    }
    pins = base_pins(rows, "base")
    plan = collectable(rows, facts, pins=pins, keep_best=1, direction="maximize")
    gone = {d.id: d.reason for d in plan}
    assert set(gone) == {"w1", "orphan-base", "r1", "p1", "c1", "d1", "f1", "x1", "z"}
    assert "pruned" in gone["p1"] and "best 1" in gone["d1"]
    # minimize flips who is best
    plan = collectable(rows, facts, pins=pins, keep_best=1, direction="minimize")
    assert "c2" in {d.id for d in plan} and "d1" not in {d.id for d in plan}
    # while the warm-up runs, its newest checkpoint is kept; a running trial without a
    # checkpoint of its own keeps the one it was forked from
    warmup = [_row("w1", WARMUP, "warmup", 1), _row("w2", WARMUP, "warmup", 2)]
    plan = collectable(warmup, {}, pins=base_pins(warmup, None), keep_best=1, direction="maximize")
    assert {d.id for d in plan} == {"w1"}
    plan = collectable([_row("p", 9, "trial", 3)], {8: TrialFacts(8, "RUNNING", parent="p"),
                       9: TrialFacts(9, "FAIL")}, pins=set(), keep_best=1,
                       direction="maximize")  # fmt: skip
    assert plan == []


def test_kill_in_the_middle_of_gc_leaves_nothing_half_deleted(tmp_path):
    path = write_study(
        tmp_path,
        name="gck",
        warmup={"epochs": 1, "hparams": {"lr": 1e-2, "batch_size": 64, "hidden": 512,
                                         "dropout": 0.1}},
        trials={"n": 6, "epochs": 0.5, "eval_every": 0.25},
        checkpoints={"every": 0.25, "keep_best": 100},
        pruner={"name": "NopPruner"},
    )  # fmt: skip
    assert main(["run", path]) == 0
    s = Session.open(path, create=False)
    before = {i.id for i in s.store.list()}
    s.close()
    assert len(before) == 7  # base + 6 finals
    with open(path) as f:
        doc = yaml.safe_load(f)
    doc["checkpoints"]["keep_best"] = 1
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)

    # killed exactly while a deletion is under way: its row marked, its files whole (the
    # second checkpoint), or its files gone and its row not yet `deleted` (the first)
    for point, n in (("gc.marked", 2), ("gc.files_deleted", 1)):
        kill_at_point([sys.executable, "-m", "hpsearch", "gc", path], point, n)
        s = Session.open(path, create=False)
        assert [r for r in s.lineage.checkpoints() if r.status == "deleting"]
        for info in s.store.list():  # whatever the kill interrupted: every listed one loads
            s.store.verify(info.id)
        s.close()
    # a rerun finishes the job
    assert main(["gc", path]) == 0
    s = Session.open(path, create=False)
    after = {i.id for i in s.store.list()}
    assert len(after) == 2 and s.attr("base_checkpoint") in after
    assert s.store.leftovers() == []
    rows = s.lineage.checkpoints()
    assert {r.status for r in rows} <= {"committed", "deleted"}
    assert {r.id for r in rows if r.status == "committed"} == after
    s.close()
    assert main(["verify", path]) == 0


def test_gc_decides_the_same_reading_only_the_trials_that_own_its_rows() -> None:
    """`trial_facts(owners=...)` leaves out finished trials that own no live row (each
    collection, one a trial, read every trial of the study): on random studies of every state,
    retry chains and forks, GC deletes exactly what it deletes knowing every trial."""
    import random
    from types import SimpleNamespace

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from hpsearch.search.collect import trial_facts

    states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
              TrialState.WAITING]  # fmt: skip
    for seed in range(20):
        rng = random.Random(seed)
        trials, rows = [], []
        for n in range(120):
            state = rng.choice(states)
            attrs: dict[str, object] = {}
            if n and rng.random() < 0.5:
                attrs["hpsearch.parent_checkpoint"] = f"c{rng.randrange(n)}-final"
            if state == TrialState.FAIL:
                attrs["hpsearch.fail_kind"] = rng.choice(["error", "error", "oom"])
            if n and rng.random() < 0.2:
                attrs["hpsearch.retry_of"] = rng.randrange(n)
            t = optuna.trial.create_trial(
                state=state, value=rng.random() if state == TrialState.COMPLETE else None,
                params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                user_attrs=attrs,
            )  # fmt: skip
            t.number = n
            trials.append(t)
            for kind in ("trial", "final"):
                if rng.random() < 0.3:
                    status = rng.choice(["pending", "committed", "committed", "deleting"])
                    row = (f"c{n}-{kind}", "s", n, None, kind, None, 1, 1, 1.0, 1, status, 0.0, 0.0)
                    rows.append(CheckpointRow(*row))  # type: ignore[arg-type]
        session = SimpleNamespace(settings=SimpleNamespace(trials=SimpleNamespace(retries=2)))
        every = trial_facts(session, trials)  # type: ignore[arg-type]
        some = trial_facts(session, trials, owners={r.trial for r in rows})  # type: ignore[arg-type]
        assert len(some) < len(every)  # it does leave trials out
        for direction in ("maximize", "minimize"):
            for keep_best in (0, 3):
                got = [
                    collectable(rows, facts, pins=set(), keep_best=keep_best, direction=direction)
                    for facts in (every, some)
                ]
                assert got[0] == got[1], f"seed {seed}"
