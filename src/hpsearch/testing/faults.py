"""Kill a real `hpsearch run` right after observable events; damage checkpoints between runs.

    from hpsearch.testing import StudyPaths, kill_at_events, takeovers_after
    paths = StudyPaths.of("study.yaml")
    kills = kill_at_events(["hpsearch", "run", "study.yaml"], paths, 20, random.Random(0))
    # then run the command to the end and compare with an uninterrupted study

Kills are driven by what the study did, never by how long it took, so a test proves the same
thing on a loaded machine as on a quiet one. The watcher only reads: the checkpoint root (one
directory per committed checkpoint, `.tmp-*` while one is written, `.del-*` while one is
deleted) and the study's sqlite database, opened read-only (for a journal storage: the lineage's
SQLite file beside it, and the journal, read as Optuna replays it). It wakes on inotify events from
the root (and from the database's directory, for reports); on other systems than Linux it polls
every few milliseconds. When an event is seen it freezes the run's process group with SIGSTOP,
checks the event on the frozen state (nothing can change any more), and then SIGKILLs it, or
lets it go on with SIGCONT if the event had already passed. So each `Kill` records exactly what
the killed run left behind, and a kill after a commit is never "too late" however slow the
machine: the state it records is the state it killed.

Events (counted from the start of each run; N is drawn from 1..`most`):

- `commit`: after the run's Nth committed checkpoint, at a moment a trial of it is mid-way (still
  RUNNING) and has a checkpoint of its own on disk. Each such kill therefore forces a takeover:
  the next run must continue that trial from that checkpoint (`takeovers_after` checks it).
- `save`: inside a save (its temporary directory exists, no manifest yet), once the run has
  committed one checkpoint. Best effort: a small save can be over before the watcher runs; after
  `misses` saves missed the kill lands on the state after the last one (`Kill.hit` says which).
- `report`: after the run's Nth new intermediate value (Optuna's table).
- `gc`: while a checkpoint is being deleted (its row is `deleting` or its `.del-*` directory
  exists), once the run has committed one checkpoint.

Every event needs the run to have made progress first (a commit or a new report), so a campaign of
any length ends. Only local checkpoint directories and sqlite or journal studies are watched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import select
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

from hpsearch.search.optuna_bridge import JournalReader

MANIFEST = "manifest.json"
EVENTS = ("commit", "save", "report", "gc")
FORGERIES = ("flip", "no-manifest", "truncate")


@dataclass(frozen=True)
class StudyPaths:
    """Where a study's state lives: its sqlite file (a journal's: the lineage's, beside it), its
    checkpoint root, its name, and its journal file (None: Optuna's tables are in `db`)."""

    db: str
    root: str
    name: str
    journal: str | None = None

    @classmethod
    def of(cls, study_file: str) -> StudyPaths:
        from hpsearch.config import load_study_file
        from hpsearch.lineage.journal import journal_file, lineage_file

        s = load_study_file(study_file)
        root = os.path.join(s.checkpoints.dir, s.name)
        journal = journal_file(s.storage)
        if "://" in s.checkpoints.dir:
            raise ValueError(f"{study_file}: only a local checkpoints.dir")
        if journal is not None:
            return cls(lineage_file(journal), root, s.name, journal)
        if not s.storage.startswith("sqlite:///"):
            raise ValueError(f"{study_file}: only sqlite or journal storage")
        return cls(s.storage[len("sqlite:///") :], root, s.name)


@dataclass
class Kill:
    """One SIGKILL and the state it froze."""

    event: str  # one of EVENTS
    n: int  # the Nth such event of that run
    at: float  # time.time() of the kill (to order it among the attempts' rows)
    hit: bool = True  # `save`: its temporary directory still existed at the kill
    trial: int | None = None  # a trial left mid-way with a committed checkpoint of its own
    checkpoint: str | None = None  # that trial's newest checkpoint: the next run resumes there
    seen: str = ""  # what was frozen, for the summary
    forged: str = ""  # set by whoever damaged `checkpoint` after the kill (see `forge`)


@dataclass
class _Run:
    """What one run has done so far, as seen from outside."""

    pid: int
    t0: float  # time.time() at its start: attempts it began started after this
    names0: set[str]  # the root's entries at its start (leftovers of earlier runs included)
    reports0: int
    reports: int = 0
    misses: int = 0
    committed: set[str] = field(default_factory=set)  # every commit seen (GC removes some)
    looked_at: set[str] = field(default_factory=set)  # commits an event was checked on

    @property
    def commits(self) -> int:
        return len(self.committed)


class Watch:
    """Read-only eyes on a study: the checkpoint root and the database, woken by inotify.

    `Watch(paths).until(proc, lambda w: w.query("select ...", ...))` waits for a state.
    """

    _MASK = 0x2 | 0x40 | 0x80 | 0x100 | 0x200  # MODIFY, MOVED_FROM, MOVED_TO, CREATE, DELETE

    def __init__(self, paths: StudyPaths) -> None:
        self.p = paths
        self.journal = JournalReader(paths.journal) if paths.journal else None
        self.fds: dict[str, int] = {}  # one inotify instance per directory, to wake on either
        self.libc: ctypes.CDLL | None = None
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            if hasattr(libc, "inotify_init1"):  # Linux only
                self.libc = libc

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def _fd(self, d: str) -> int | None:
        if d not in self.fds and self.libc is not None and os.path.isdir(d):
            fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0 and self.libc.inotify_add_watch(fd, d.encode(), self._MASK) < 0:
                os.close(fd)
                fd = -1
            if fd >= 0:
                self.fds[d] = fd
        return self.fds.get(d)

    def wait(self, db: bool = True) -> None:
        """Until something changes in the root (or the database's directory, with `db`), or
        5 ms pass without inotify, 50 ms with it (the process may have exited)."""
        dirs = (self.p.root, os.path.dirname(self.p.db)) if db else (self.p.root,)
        maybe = [self._fd(d) for d in dirs]
        fds = [fd for fd in maybe if fd is not None]
        if len(fds) < len(maybe):
            time.sleep(0.005)
            return
        ready, _, _ = select.select(fds, [], [], 0.05)
        for fd in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 65536):
                    pass

    def until(
        self, proc: subprocess.Popen, cond: Callable[[Watch], object], timeout_s: float
    ) -> bool:
        """Wait until `cond(self)` is true (True) or `proc` exits first (False). `timeout_s` is a
        safety net: RuntimeError when it passes."""
        end = time.monotonic() + timeout_s
        while not cond(self):
            if proc.poll() is not None:
                return bool(cond(self))
            if time.monotonic() > end:
                raise RuntimeError(f"nothing happened in {timeout_s:.0f} s: the run hangs")
            self.wait()
        return True

    def names(self) -> list[str]:
        try:
            return os.listdir(self.p.root)
        except FileNotFoundError:
            return []

    def new(self, names: Sequence[str], run: _Run, prefix: str) -> list[str]:
        """Entries this run made: `.tmp-*` (saving), `.del-*` (deleting), or "" (committed)."""
        fresh = [x for x in names if x not in run.names0]
        if prefix:
            return [x for x in fresh if x.startswith(prefix)]
        return [
            x
            for x in fresh
            if not x.startswith(".") and os.path.exists(os.path.join(self.p.root, x, MANIFEST))
        ]

    def query(self, sql: str, *args: object) -> list[tuple]:
        if not os.path.exists(self.p.db):
            return []
        try:
            con = sqlite3.connect(f"file:{self.p.db}?mode=ro", uri=True, timeout=10)
        except sqlite3.OperationalError:
            return []
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []
        finally:
            con.close()

    def _trials(self) -> list[FrozenTrial]:
        return self.journal.trials(self.p.name) if self.journal is not None else []

    def reports(self) -> int:
        if self.journal is not None:
            return sum(len(t.intermediate_values) for t in self._trials())
        rows = self.query(
            "select count(*) from trial_intermediate_values v join trials t on "
            "v.trial_id = t.trial_id join studies s on t.study_id = s.study_id "
            "where s.study_name = ?",
            self.p.name,
        )
        return rows[0][0] if rows else 0

    def deleting(self) -> bool:
        return bool(
            self.query(
                "select 1 from hpsearch_checkpoints where study=? and status='deleting'",
                self.p.name,
            )
        )

    def midway(self, since: float) -> tuple[int, str] | None:
        """A RUNNING trial with an attempt running since `since` and a checkpoint of its own on
        disk, and that checkpoint (its newest by step: the one a takeover must resume from; a
        row still `pending` counts when its manifest is written), or None."""
        lineage = (
            "select c.trial, c.id from hpsearch_checkpoints c "
            "join hpsearch_attempts a on a.study = c.study and a.trial = c.trial "
            "{trials} where c.study = ? and c.trial >= 0 and c.kind in ('trial', 'final') "
            "and c.status in ('committed', 'pending') and a.status = 'running' "
            "and a.started >= ? {running} order by c.step desc"
        )
        if self.journal is not None:
            running = {t.number for t in self._trials() if t.state == TrialState.RUNNING}
            rows = self.query(lineage.format(trials="", running=""), self.p.name, since)
            rows = [(trial, ckpt) for trial, ckpt in rows if trial in running]
        else:
            trials = (
                "join studies s on s.study_name = c.study "
                "join trials t on t.study_id = s.study_id and t.number = c.trial"
            )
            sql = lineage.format(trials=trials, running="and t.state = 'RUNNING'")
            rows = self.query(sql, self.p.name, since)
        for trial, ckpt in rows:
            if os.path.exists(os.path.join(self.p.root, ckpt, MANIFEST)):
                return trial, ckpt
        return None


def _freeze(pid: int) -> None:
    """SIGSTOP the run's process group and wait until its leader is stopped (or gone)."""
    os.killpg(pid, signal.SIGSTOP)
    stat = f"/proc/{pid}/stat"
    if not os.path.exists(stat):
        time.sleep(0.01)  # not Linux: give the signal a moment
        return
    for _ in range(10_000):
        try:
            with open(stat) as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in "TtZX":
            return
        time.sleep(0.0005)


def _fired(event: str, w: Watch, run: _Run, n: int, misses: int) -> Kill | None:
    """Whether `event` has happened in this run (checked on live state, cheaply)."""
    names = w.names()
    run.committed.update(w.new(names, run, ""))
    unseen = run.committed - run.looked_at
    if event == "report":
        run.reports = w.reports() - run.reports0
        return Kill(event, n, 0.0) if run.reports >= n else None
    if run.commits < 1:
        return None
    if event == "commit":
        if run.commits >= n and unseen:
            run.looked_at |= unseen
            return Kill(event, n, 0.0)
        return None
    if event == "save":
        if w.new(names, run, ".tmp-"):
            return Kill(event, n, 0.0)
        if run.misses >= misses and unseen:
            run.looked_at |= unseen
            return Kill(event, n, 0.0, hit=False)
        return None
    # the `.del-*` rename is what inotify sees; a row marked `deleting` is checked once frozen
    return Kill(event, n, 0.0) if w.new(names, run, ".del-") else None


def _confirm(kill: Kill, w: Watch, run: _Run) -> bool:
    """Whether the event still holds on the frozen state; fills in what was frozen."""
    names = w.names()
    mid = w.midway(run.t0)
    if mid is not None:
        kill.trial, kill.checkpoint = mid
    if kill.event == "commit":
        kill.seen = f"{run.commits} committed in this run"
        return mid is not None
    if kill.event == "save":
        tmp = w.new(names, run, ".tmp-")
        if kill.hit and not tmp:
            run.misses += 1
            return False
        kill.seen = f"inside the save of {tmp[0][5:].rpartition('-')[0]}" if tmp else "missed"
        return True
    if kill.event == "report":
        kill.seen = f"{run.reports} new reports in this run"
        return True
    dels = w.new(names, run, ".del-")
    kill.seen = f"deleting {dels[0][5:]}" if dels else "a row marked deleting"
    return bool(dels) or w.deleting()


def kill_at_events(
    cmd: list[str],
    paths: StudyPaths,
    kills: int,
    rng: random.Random,
    *,
    events: Sequence[str] = EVENTS,
    most: int = 3,
    misses: int = 20,
    env: dict[str, str] | None = None,
    between: Callable[[Kill], None] | None = None,
    log: str | None = None,
    timeout_s: float = 600.0,
) -> list[Kill]:
    """Run `cmd` again and again, SIGKILLing each run right after an event; `kills` kills in
    all, the events taking turns in a shuffled order (see the module docstring). Stops early
    when a run finishes the study. `between(kill)` is called after each kill, before the next
    run (to damage checkpoints, say). Each run's output is appended to `log` (if given).
    `timeout_s` is only a safety net against a run that hangs: a run without its event for
    that long is killed and RuntimeError raised."""
    order = [events[i % len(events)] for i in range(kills)]
    rng.shuffle(order)
    w = Watch(paths)
    made: list[Kill] = []
    try:
        for event in order:
            n = rng.randint(1, most)
            run = _Run(0, time.time(), set(w.names()), w.reports() if event == "report" else 0)
            with open(log or os.devnull, "a") as out:
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
            run.pid = proc.pid
            kill = _one(proc, event, n, w, run, misses, timeout_s)
            if kill is None:
                return made  # the run finished the study
            made.append(kill)
            if between is not None:
                between(kill)
        return made
    finally:
        w.close()


def _one(
    proc: subprocess.Popen, event: str, n: int, w: Watch, run: _Run, misses: int, timeout_s: float
) -> Kill | None:
    end = time.monotonic() + timeout_s
    try:
        while proc.poll() is None:
            if time.monotonic() > end:
                raise RuntimeError(f"no {event} event in {timeout_s:.0f} s: the run hangs")
            kill = _fired(event, w, run, n, misses)
            if kill is None:
                w.wait(db=event == "report")
                continue
            _freeze(proc.pid)
            if proc.poll() is None and _confirm(kill, w, run):
                kill.at = time.time()
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return kill
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
        return None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def takeovers_after(kills: Sequence[Kill], attempts: Sequence, rows: Sequence) -> list[str]:
    """What went wrong with the takeovers the kills forced (empty when nothing did): after each
    kill that left trial T mid-way, T's next attempt must resume from T's newest checkpoint at
    the kill. `attempts` and `rows` are the lineage's (`Lineage.attempts()`,
    `Lineage.checkpoints()`). Kills whose checkpoint was forged are left out: an attempt's row
    names the first source it will try, so whether the forged one was refused shows in the
    run's output ("cannot be used") and in the results, not here."""
    kind = {r.id: (r.trial, r.kind) for r in rows}
    problems = []
    for k in kills:
        if k.trial is None or k.forged:
            continue
        nxt = [a for a in attempts if a.trial == k.trial and a.started > k.at]
        if not nxt:
            problems.append(f"trial {k.trial} was never run again after the {k.event} kill")
            continue
        got = min(nxt, key=lambda a: a.started).resumed_from
        if got != k.checkpoint:
            problems.append(
                f"trial {k.trial} resumed from {got} {kind.get(got, '')}, not from its newest "
                f"checkpoint at the {k.event} kill, {k.checkpoint}"
            )
    return problems


def forge(root: str, ckpt_id: str, how: str) -> str:
    """Damage a committed checkpoint in place, as a bad disk or a hostile user would: `flip` one
    byte in the middle of the model file, `no-manifest` delete its manifest, `truncate` the
    optimizer file to half. Returns what was done."""
    d = os.path.join(root, ckpt_id)
    if how == "flip":
        path = os.path.join(d, "model.safetensors")
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0x01]))
        return f"flipped a bit at byte {size // 2} of {ckpt_id}/model.safetensors"
    if how == "no-manifest":
        os.remove(os.path.join(d, MANIFEST))
        return f"deleted {ckpt_id}/{MANIFEST}"
    if how == "truncate":
        path = os.path.join(d, "optimizer.safetensors")
        size = os.path.getsize(path)
        os.truncate(path, size // 2)
        return f"truncated {ckpt_id}/optimizer.safetensors from {size} to {size // 2} bytes"
    raise ValueError(f"forge: how must be one of {FORGERIES}, got {how!r}")
