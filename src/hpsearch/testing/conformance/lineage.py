"""The rules every lineage backend keeps, as a test suite to run over each (as Optuna ships
`StorageTestCase`). Subclass `LineageTestCase` in a pytest module under a `Test...` name and say
how to open a fresh database:

    class TestSqliteLineage(LineageTestCase):
        def open_database(self, tmp_path):
            url = f"sqlite:///{tmp_path}/lineage.db"
            return lambda study: SqlLineage(url, study)

Each call of the returned function must open a new lineage of the named study on that one
database, as another worker would (its own engine or connections): the races run between them.
A subclass may raise `RACES` (forced races per race test) where its races are cheap.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from hpsearch.lineage.model import (
    WARMUP,
    WORKERS,
    CheckpointKind,
    DuplicateCheckpoint,
    attempt_is_stale,
)
from hpsearch.lineage.protocol import Lineage

OpenStudy = Callable[[str], Lineage]


def _pending(lin: Lineage, ckpt_id: str, trial: int = 0, step: int = 1,
             kind: CheckpointKind = "trial", parent: str | None = None) -> None:  # fmt: skip
    lin.add_pending(ckpt_id, trial=trial, kind=kind, parent=parent, step=step,
                    samples=step * 8, epoch=step / 10)  # fmt: skip


def _race(*calls: Callable[[], Any]) -> list[Any]:
    """Run `calls` in threads released at one moment by a barrier; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class LineageTestCase:
    """The conformance suite of `hpsearch.lineage.Lineage` backends."""

    RACES = 20  # forced races per race test: the old two-transaction take_over lost most

    def open_database(self, tmp_path: Path) -> OpenStudy:
        """A fresh, empty database; returns a function that opens a lineage of a study on it."""
        raise NotImplementedError

    @pytest.fixture
    def open_study(self, tmp_path: Path) -> Iterator[OpenStudy]:
        opened: list[Lineage] = []
        open_database = self.open_database(tmp_path)

        def open_study(study: str) -> Lineage:
            opened.append(open_database(study))
            return opened[-1]

        yield open_study
        for lin in opened:
            lin.close()

    @pytest.fixture
    def lin(self, open_study: OpenStudy) -> Lineage:
        return open_study("study")

    # -- checkpoint rows ---------------------------------------------------------------------

    def test_a_row_moves_through_its_states(self, lin: Lineage) -> None:
        assert lin.study == "study"
        lin.add_pending("ck-1", trial=3, kind="trial", parent="ck-0", step=7, samples=56,
                        epoch=0.7, attempt="tok")  # fmt: skip
        row = lin.get("ck-1")
        assert row is not None
        assert (row.id, row.study, row.trial, row.attempt, row.kind, row.parent) == (
            "ck-1", "study", 3, "tok", "trial", "ck-0"
        )  # fmt: skip
        assert (row.step, row.samples, row.epoch, row.nbytes, row.status) == (
            7, 56, 0.7, 0, "pending"
        )  # fmt: skip
        assert row.created == row.updated
        lin.set_status("ck-1", "committed", nbytes=1234)
        row = lin.get("ck-1")
        assert row is not None and (row.status, row.nbytes, row.kind) == (
            "committed",
            1234,
            "trial",
        )
        assert row.updated >= row.created
        lin.set_status("ck-1", "committed", kind="final")  # nbytes stays
        row = lin.get("ck-1")
        assert row is not None and (row.status, row.nbytes, row.kind) == (
            "committed",
            1234,
            "final",
        )
        for status in ("deleting", "deleted"):
            lin.set_status("ck-1", status)
            assert (r := lin.get("ck-1")) is not None and r.status == status
        _pending(lin, "ck-2")
        lin.set_status("ck-2", "failed")
        _pending(lin, "ck-3", kind="base", trial=WARMUP)
        lin.set_status("ck-3", "committed", nbytes=9)
        lin.set_status("ck-3", "unusable")
        statuses = {r.id: r.status for r in lin.checkpoints()}
        assert statuses == {"ck-1": "deleted", "ck-2": "failed", "ck-3": "unusable"}

    def test_unknown_ids_and_duplicates(self, lin: Lineage) -> None:
        assert lin.get("ck-none") is None
        lin.set_status("ck-none", "committed", nbytes=1)  # ignored: creates nothing
        assert lin.get("ck-none") is None and lin.checkpoints() == []
        _pending(lin, "ck-1", step=1)
        with pytest.raises(DuplicateCheckpoint):
            _pending(lin, "ck-1", step=2)
        row = lin.get("ck-1")
        assert row is not None and row.step == 1  # the first row stands

    def test_checkpoints_are_ordered_by_trial_step_then_creation(self, lin: Lineage) -> None:
        for ckpt_id, trial, step in [("a", 2, 5), ("b", WARMUP, 10), ("c", 2, 1), ("d", 0, 3),
                                     ("e", 2, 5), ("f", 0, 3)]:  # fmt: skip
            _pending(lin, ckpt_id, trial=trial, step=step)
        assert [r.id for r in lin.checkpoints()] == ["b", "d", "f", "c", "a", "e"]

    def test_filters_narrow(self, lin: Lineage) -> None:
        _pending(lin, "w1", trial=WARMUP, kind="warmup", step=1)
        _pending(lin, "base", trial=WARMUP, kind="base", step=2)
        _pending(lin, "t1", trial=1, step=3)
        _pending(lin, "t1-final", trial=1, kind="final", step=4)
        _pending(lin, "t2", trial=2, step=3)
        for ckpt_id in ("base", "t1", "t1-final"):
            lin.set_status(ckpt_id, "committed", nbytes=10)
        lin.set_status("w1", "deleted")

        def ids(**filters: Any) -> list[str]:
            return [r.id for r in lin.checkpoints(**filters)]

        assert ids(trial=1) == ["t1", "t1-final"]
        assert ids(trial=WARMUP) == ["w1", "base"]
        assert ids(statuses=("committed",)) == ["base", "t1", "t1-final"]
        assert ids(statuses=("pending", "deleted")) == ["w1", "t2"]
        assert ids(kinds=("base", "final")) == ["base", "t1-final"]
        assert ids(trial=1, statuses=("committed",), kinds=("trial",)) == ["t1"]
        assert ids(trial=7) == [] and ids(statuses=()) == [] and ids(kinds=()) == []

    def test_rows_with_invalid_ids_are_skipped_with_one_warning(
        self, lin: Lineage, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _pending(lin, "good", step=1)
        _pending(lin, "../evil", step=2)  # as a hand-edited or damaged database could hold
        _pending(lin, "a/b", step=3)
        lin.set_status("a/b", "committed", nbytes=1)
        assert [r.id for r in lin.checkpoints()] == ["good"]
        assert [r.id for r in lin.checkpoints(trial=0)] == ["good"]
        assert sorted(lin.invalid_ids()) == ["../evil", "a/b"]
        assert lin.invalid_ids(statuses=("committed",)) == ["a/b"]
        assert lin.invalid_ids(statuses=("deleted",)) == []
        err = capsys.readouterr().err
        assert err.count("skipping a checkpoint row of study 'study'") == 2  # once per id
        assert "'../evil'" in err and "'a/b'" in err

    # -- attempts ----------------------------------------------------------------------------

    def test_an_attempt_starts_beats_and_finishes(self, lin: Lineage) -> None:
        token = lin.start_attempt(3, resumed_from="ck-0")
        assert lin.owns(token)
        row = lin.current_attempt(3)
        assert row is not None
        assert (row.token, row.study, row.trial, row.status, row.resumed_from) == (
            token, "study", 3, "running", "ck-0"
        )  # fmt: skip
        assert (row.host, row.pid) == (socket.gethostname(), os.getpid())
        assert (row.start_step, row.steps, row.samples) == (0, 0, 0)
        assert row.heartbeat == row.started
        assert lin.heartbeat(token, start_step=4)
        assert lin.heartbeat(token, steps=5, samples=40)
        assert lin.heartbeat(token, steps=6)  # counts not given stay
        beat = lin.current_attempt(3)
        assert beat is not None and (beat.start_step, beat.steps, beat.samples) == (4, 6, 40)
        assert beat.heartbeat >= row.heartbeat
        lin.finish_attempt(token)
        assert not lin.owns(token) and not lin.heartbeat(token, steps=7)
        assert lin.current_attempt(3) is None
        lin.finish_attempt(token, "dead")  # not running: left as it ended
        (done,) = lin.attempts(3)
        assert (done.status, done.steps) == ("done", 6)
        other = lin.start_attempt(3)
        lin.finish_attempt(other, "dead")
        assert [a.status for a in lin.attempts(3)] == ["done", "dead"]
        assert not lin.owns("no-such-token") and not lin.heartbeat("no-such-token")

    def test_attempts_are_listed_oldest_first(self, lin: Lineage) -> None:
        tokens = [lin.start_attempt(trial) for trial in (2, 1, 2, WARMUP)]
        assert [a.token for a in lin.attempts()] == tokens
        assert [a.token for a in lin.attempts(2)] == [tokens[0], tokens[2]]
        assert lin.attempts(5) == []

    def test_current_attempt_is_the_newest_running(self, lin: Lineage) -> None:
        assert lin.current_attempt(1) is None
        first = lin.start_attempt(1)
        second = lin.start_attempt(1)
        assert (c := lin.current_attempt(1)) is not None and c.token == second
        lin.finish_attempt(second, "dead")
        assert (c := lin.current_attempt(1)) is not None and c.token == first
        lin.finish_attempt(first)
        assert lin.current_attempt(1) is None
        lin.start_attempt(2)
        assert lin.current_attempt(1) is None  # another trial's attempt is not this one's

    def test_take_over_in_turn(self, lin: Lineage) -> None:
        a = lin.take_over(3, None, resumed_from=None)  # a free trial
        assert a is not None and lin.owns(a)
        assert lin.take_over(3, None, resumed_from=None) is None  # someone runs it
        b = lin.take_over(3, a, resumed_from="ck-x")
        assert b is not None and b != a
        assert (c := lin.current_attempt(3)) is not None
        assert (c.token, c.resumed_from) == (b, "ck-x")
        assert [x.status for x in lin.attempts(3)] == ["dead", "running"]
        # the old worker, if it was only slow, can no longer commit; a second taker loses
        assert not lin.owns(a) and not lin.heartbeat(a, steps=6)
        assert lin.take_over(3, a, resumed_from=None) is None
        lin.finish_attempt(b)
        assert lin.take_over(3, b, resumed_from=None) is None  # finished, not stale
        assert lin.take_over(3, "no-such-token", resumed_from=None) is None
        assert lin.take_over(3, None, resumed_from=None) is not None  # free again

    def test_withdraw_a_claim_that_ran_nothing(self, lin: Lineage) -> None:
        done = lin.start_attempt(4)
        lin.finish_attempt(done)
        claim = lin.take_over(4, None, resumed_from=None)  # on an old look: it had finished
        assert claim is not None
        lin.withdraw(claim)
        assert [a.token for a in lin.attempts(4)] == [done] and lin.current_attempt(4) is None
        assert not lin.owns(claim) and not lin.heartbeat(claim)
        lin.withdraw(done)  # a finished attempt is kept
        dead = lin.start_attempt(4)
        lin.finish_attempt(dead, "dead")
        lin.withdraw(dead)
        assert [a.status for a in lin.attempts(4)] == ["done", "dead"]

    def test_take_over_of_a_free_trial_has_one_winner(self, open_study: OpenStudy) -> None:
        """Two workers released at the same moment, both seeing the warm-up (or a trial) free:
        exactly one gets a token, and only its attempt runs."""
        one, two = open_study("study"), open_study("study")
        for trial in [WARMUP, *range(self.RACES - 1)]:
            got = _race(
                partial(one.take_over, trial, None, resumed_from=None),
                partial(two.take_over, trial, None, resumed_from=None),
            )
            winners = [g for g in got if g is not None]
            assert len(winners) == 1, f"trial {trial}: {len(winners)} winners"
            assert [a.token for a in one.attempts(trial)] == winners
            assert (c := two.current_attempt(trial)) is not None and c.token == winners[0]

    def test_take_over_of_a_stale_attempt_has_one_winner(self, open_study: OpenStudy) -> None:
        one, two = open_study("study"), open_study("study")
        for trial in range(self.RACES):
            stale = one.start_attempt(trial)
            got = _race(
                partial(one.take_over, trial, stale, resumed_from="ck-1"),
                partial(two.take_over, trial, stale, resumed_from="ck-2"),
            )
            winners = [g for g in got if g is not None]
            assert len(winners) == 1, f"trial {trial}: {len(winners)} winners"
            rows = {a.token: a.status for a in two.attempts(trial)}
            assert rows == {stale: "dead", winners[0]: "running"}

    def test_a_claim_is_taken_once(self, open_study: OpenStudy) -> None:
        one, two = open_study("study"), open_study("study")
        assert one.claim("retry:3")
        assert not one.claim("retry:3") and not two.claim("retry:3")
        assert two.claim("retry:4")
        got = _race(*[partial(w.claim, "retry:5") for w in (one, two, one, two)])
        assert sorted(got) == [False, False, False, True]

    def test_stale_attempts(self, lin: Lineage) -> None:
        lin.start_attempt(1)
        row = lin.current_attempt(1)
        assert row is not None
        beat = row.heartbeat
        # a live process of this host: stale only once its heartbeat is older than the grace
        assert not attempt_is_stale(row, grace_s=60)
        assert not attempt_is_stale(row, grace_s=60, now=beat + 59)
        assert attempt_is_stale(row, grace_s=60, now=beat + 61)
        # elsewhere: by the heartbeat alone
        elsewhere = replace(row, host="elsewhere", pid=2**22 + 12345)
        assert not attempt_is_stale(elsewhere, grace_s=60, now=beat + 59)
        assert attempt_is_stale(elsewhere, grace_s=60, now=beat + 61)
        # this host, its process gone: at once
        gone = replace(row, pid=2**22 + 12345)
        assert attempt_is_stale(gone, grace_s=60, now=beat)

    # -- several studies in one database -----------------------------------------------------

    def test_two_studies_in_one_database_are_isolated(self, open_study: OpenStudy) -> None:
        a, b = open_study("a"), open_study("b")
        _pending(a, "ck-a", trial=1)
        _pending(b, "ck-b", trial=1)
        a.set_status("ck-a", "committed", nbytes=5)
        assert [r.id for r in a.checkpoints()] == ["ck-a"]
        assert [r.id for r in b.checkpoints(trial=1)] == ["ck-b"]
        assert b.get("ck-a") is None
        b.set_status("ck-a", "deleted")  # not b's row: left alone
        assert (r := a.get("ck-a")) is not None and r.status == "committed"
        with pytest.raises(DuplicateCheckpoint):  # ids are unique across the database
            _pending(b, "ck-a")
        _pending(b, "../b-evil")
        assert a.invalid_ids() == [] and b.invalid_ids() == ["../b-evil"]
        token_a = a.take_over(1, None, resumed_from=None)
        assert token_a is not None
        assert b.current_attempt(1) is None and b.attempts() == []
        token_b = b.take_over(1, None, resumed_from=None)  # not blocked by a's attempt
        assert token_b is not None
        assert [x.token for x in a.attempts()] == [token_a]
        assert (c := a.current_attempt(1)) is not None and c.token == token_a
        assert a.claim("retry:1") and b.claim("retry:1")
        a.pin("ck-a", "tok", ttl_s=60)
        assert a.pinned() == {"ck-a"} and b.pinned() == set()
        assert a.take_lease("gc", "tok-a", ttl_s=60) and b.take_lease("gc", "tok-b", ttl_s=60)
        assert b.close_stale_attempts(grace_s=0, now=10**12) == 1  # b's attempt only
        assert a.owns(token_a) and not b.owns(token_b)

    def test_another_lineage_of_the_study_sees_the_same_rows(self, open_study: OpenStudy) -> None:
        one, two = open_study("study"), open_study("study")
        _pending(one, "ck-1")
        two.set_status("ck-1", "committed", nbytes=3)
        token = two.start_attempt(4)
        assert (r := one.get("ck-1")) is not None and (r.status, r.nbytes) == ("committed", 3)
        assert one.owns(token) and (c := one.current_attempt(4)) is not None
        assert c.token == token
        one.finish_attempt(token, "dead")
        assert not two.heartbeat(token)

    # -- pins, leases, stale attempts --------------------------------------------------------

    def test_a_pin_holds_until_unpinned_or_expired(self, open_study: OpenStudy) -> None:
        one, two = open_study("study"), open_study("study")
        assert one.pinned() == set()
        one.pin("ck-1", "tok-a", ttl_s=10, now=100)
        two.pin("ck-1", "tok-b", ttl_s=1, now=100)  # two attempts fork from one parent
        one.pin("ck-2", "tok-a", ttl_s=10, now=100)
        assert two.pinned(now=100.5) == {"ck-1", "ck-2"}
        one.unpin("ck-1", "tok-a")
        assert one.pinned(now=100.5) == {"ck-1", "ck-2"}  # tok-b still holds ck-1
        assert one.pinned(now=101) == {"ck-2"}  # expired at 100 + 1 (exclusive)
        one.unpin("ck-1", "tok-a")  # idempotent
        one.unpin("ck-9", "tok-z")  # nothing there
        one.pin("ck-2", "tok-a", ttl_s=10, now=108)  # renewed: now held to 118
        assert two.pinned(now=115) == {"ck-2"}
        assert two.pinned(now=118) == set()
        one.pin("ck-3", "tok-c", ttl_s=60)  # by the clock
        assert one.pinned() == {"ck-3"}
        two.unpin("ck-3", "tok-c")
        assert one.pinned() == set()

    def test_a_lease_held_by_an_ended_attempt_is_freed(self, open_study: OpenStudy) -> None:
        """A worker killed while holding a lease: once its attempt is closed as dead, the
        lease is freed at once (not at its expiry); a live holder's and a non-attempt token's
        (the `gc` command's) are kept."""
        one, two = open_study("s"), open_study("s")
        dead, live = one.start_attempt(WORKERS), two.start_attempt(WORKERS)
        assert one.take_lease("ask", dead, ttl_s=3600) and two.take_lease("gc", live, ttl_s=3600)
        assert two.take_lease("other", "gc-command-token", ttl_s=3600)
        assert two.release_orphan_leases() == 0  # every holder is running (or no attempt)
        one.finish_attempt(dead, "dead")
        assert two.release_orphan_leases() == 1
        assert two.take_lease("ask", live, ttl_s=60)  # free now, long before its expiry
        assert not one.take_lease("gc", "x", ttl_s=60)
        assert not one.take_lease("other", "x", ttl_s=60)

    def test_a_lease_has_one_holder_until_it_expires(self, open_study: OpenStudy) -> None:
        one, two = open_study("study"), open_study("study")
        assert one.take_lease("gc", "a", ttl_s=10, now=100)
        assert not two.take_lease("gc", "b", ttl_s=10, now=105)
        assert one.take_lease("gc", "a", ttl_s=10, now=108)  # renewed: held to 118
        assert not two.take_lease("gc", "b", ttl_s=10, now=115)
        assert two.take_lease("other", "b", ttl_s=10, now=115)  # another key is another lease
        assert two.take_lease("gc", "b", ttl_s=10, now=118)  # a's expired: b takes it
        assert not one.take_lease("gc", "a", ttl_s=10, now=119)
        one.release_lease("gc", "a")  # not the holder: b keeps it
        assert not one.take_lease("gc", "a", ttl_s=10, now=120)
        two.release_lease("gc", "b")
        two.release_lease("gc", "b")  # idempotent
        assert one.take_lease("gc", "a", ttl_s=10, now=120)
        assert one.take_lease("clock", "a", ttl_s=60)  # by the clock
        assert not two.take_lease("clock", "b", ttl_s=60)

    def test_a_lease_taken_at_once_has_one_winner(self, open_study: OpenStudy) -> None:
        """Two takers released at the same moment, of a free lease (even rounds) or of one that
        expired (odd rounds): exactly one gets it."""
        one, two = open_study("study"), open_study("study")
        for i in range(self.RACES):
            key = f"gc:{i}"
            if i % 2:
                assert one.take_lease(key, "old", ttl_s=1, now=0)
            got = _race(
                partial(one.take_lease, key, "one", ttl_s=60, now=10),
                partial(two.take_lease, key, "two", ttl_s=60, now=10),
            )
            assert sorted(got) == [False, True], f"round {i}: {got}"
            winner = "one" if got[0] else "two"
            assert one.take_lease(key, winner, ttl_s=60, now=20)  # the winner holds it
            assert not two.take_lease(key, "old", ttl_s=60, now=20)

    def test_stale_attempts_are_closed(self, open_study: OpenStudy) -> None:
        lin, other = open_study("study"), open_study("other")
        worker = lin.start_attempt(WORKERS)  # a presence row, as a killed worker leaves it
        trial = lin.start_attempt(1)
        done = lin.start_attempt(2)
        lin.finish_attempt(done)
        elsewhere = other.start_attempt(1)
        beats = [a.heartbeat for a in lin.attempts()]
        assert lin.close_stale_attempts(grace_s=60, now=min(beats) + 59) == 0  # all alive
        assert lin.owns(worker) and lin.owns(trial)
        assert lin.close_stale_attempts(grace_s=60, now=max(beats) + 61) == 2
        status = {a.token: a.status for a in lin.attempts()}
        assert status == {worker: "dead", trial: "dead", done: "done"}
        assert not lin.heartbeat(trial)  # its worker, if it lives, must stop
        assert lin.current_attempt(1) is None
        assert other.owns(elsewhere)  # another study's attempts are its own
        assert lin.close_stale_attempts(grace_s=60, now=max(beats) + 61) == 0
        assert lin.take_over(1, None, resumed_from=None) is not None  # the trial is free
        assert lin.close_stale_attempts(grace_s=60) == 0  # by the clock: alive
