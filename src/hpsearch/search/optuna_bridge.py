"""Every call into Optuna's private API, in one place, checked against the versions we test.

hpsearch drives Optuna's ask-and-tell interface from its own loop, and a few things that loop
needs have no public API: a trial's frozen state by id while it runs, a `Trial` handle for a trial
another process asked for, `tell` as `optimize` calls it (so a sampler may stop the study), and
copying a grid point to a retry. pyproject.toml pins optuna below the next major version;
`check_version` says so at run time when someone installs an untested one anyway.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import sys
from collections.abc import Generator
from typing import Any

import optuna
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalStorage
from optuna.storages.journal._file import BaseJournalFileLock, get_lock_file
from optuna.storages.journal._storage import JournalOperation, JournalStorageReplayResult
from optuna.trial import FrozenTrial

SUPPORTED_MAJORS = (4, 5)  # keep in step with the pin in pyproject.toml

# samplers whose randomness is all in their seed: reseeding them by (seed, trial number) makes a
# resumed study sample what an uninterrupted one would; others (grid, QMC) keep their plan in the
# study's storage and keep one seed
RESEEDED_SAMPLERS = frozenset(
    {"TPESampler", "RandomSampler", "CmaEsSampler", "GPSampler", "NSGAIISampler", "NSGAIIISampler"}
)

# what a reseeded sampler may take over from the one it replaces: caches that are a pure function
# of the study's trials (TPE's intersection search space, computed incrementally), never its RNG
_CARRIED_CACHES = ("_search_space", "_group_decomposed_search_space")


def carry_caches(old: optuna.samplers.BaseSampler, new: optuna.samplers.BaseSampler) -> None:
    """Hand `old`'s trial-derived caches to `new`, a sampler of the same class made with another
    seed: without them every reseeded TPE sampler recomputed the intersection search space over
    every trial of the study, once per new trial (270 ms a trial at 3,000 trials). What the
    caches hold does not depend on the seed, so a sampler that starts with them samples what
    one that recomputes them samples."""
    if type(old) is not type(new):
        return
    for name in _CARRIED_CACHES:
        if hasattr(old, name) and hasattr(new, name) and getattr(old, name) is not None:
            setattr(new, name, getattr(old, name))


_warned = False


def check_version() -> None:
    global _warned
    major = int(optuna.__version__.split(".")[0])
    if major not in SUPPORTED_MAJORS and not _warned:
        _warned = True
        print(
            f"warning: optuna {optuna.__version__} is untested with this hpsearch (tested: "
            f"{', '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}); its private API may differ",
            file=sys.stderr,
        )


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return int(trial._trial_id)


def frozen(study: optuna.Study, tid: int) -> FrozenTrial:
    """A trial's state as the storage holds it now (`study.trials` would copy every trial)."""
    return study._storage.get_trial(tid)


def _rdb(storage: Any) -> Any:
    """The RDBStorage behind `storage` (Optuna's cache wraps it), or None for another kind."""
    backend = getattr(storage, "_backend", storage)
    return backend if hasattr(backend, "scoped_session") else None


def known(trial: optuna.Trial) -> FrozenTrial:
    """The trial as this process's handle knows it: what the storage held when the handle was
    opened, and what was written through it since (params, reports, user attributes; hpsearch
    writes a running trial only through its one handle). Not a copy: read it, do not change it.
    Saves `frozen`'s storage read (a few milliseconds each on SQLite, several a trial)."""
    return trial._cached_frozen_trial


def handle(study: optuna.Study, tid: int) -> optuna.Trial:
    """A `Trial` to report to, sample and prune with, for a trial asked earlier (maybe by
    another process, which died)."""
    return optuna.trial.Trial(study, tid)


def set_waiting_user_attrs(study: optuna.Study, tid: int, attrs: dict[str, Any]) -> None:
    """User attributes of a waiting trial (enqueued, not asked yet), which has no `Trial`."""
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(tid, key, value)


def fail_waiting(study: optuna.Study, tid: int, attrs: dict[str, Any]) -> None:
    """End a waiting trial as failed without running it, `attrs` saying why: `ask` would pop
    it otherwise. Optuna lets a waiting trial be finished; `tell` only takes a running one."""
    set_waiting_user_attrs(study, tid, attrs)
    study._storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)


def enqueue(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> int:
    """`study.enqueue_trial(params, user_attrs=...)` (one write), returning the waiting trial's
    id, which Optuna's does not: `ask_waiting` pops that one, not whichever waits longest."""
    template = optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING,
        system_attrs={"fixed_params": params},
        user_attrs=user_attrs,
    )
    return int(study._storage.create_new_trial(study._study_id, template_trial=template))


def trial_number(study: optuna.Study, tid: int) -> int:
    """A trial's number from its id: one small query on an RDB storage (Optuna's own
    `get_trial_number_from_id` reads the whole trial there)."""
    backend = _rdb(study._storage)
    if backend is None:
        return int(study._storage.get_trial_number_from_id(tid))
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session) as session:
        return int(models.TrialModel.find_or_raise_by_id(tid, session).number)


def ask_waiting(study: optuna.Study, tid: int) -> optuna.Trial | None:
    """`study.ask()` for the waiting trial `tid` rather than the oldest waiting one (which may
    be a trial someone else enqueued); None when another process popped or finished it first."""
    study._thread_local.cached_all_trials = None  # as `ask` does: sample on fresh trials
    try:
        if not study._storage.set_trial_state_values(tid, optuna.trial.TrialState.RUNNING):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return optuna.trial.Trial(study, tid)


def copy_system_attrs(study: optuna.Study, tid: int, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        study._storage.set_trial_system_attr(tid, key, value)


def tell(study: optuna.Study, number: int, *args: Any, **kwargs: Any) -> bool:
    """`study.tell` as `optimize` calls it, so a sampler may stop the study (GridSampler does once
    its grid is covered). Returns True when it did: then no new trial should be asked."""
    study._thread_local.in_optimize_loop = True
    try:
        study.tell(number, *args, **kwargs)
    finally:
        study._thread_local.in_optimize_loop = False
    if getattr(study, "_stop_flag", False):
        study._stop_flag = False
        return True
    return False


def prune_as_of(study: optuna.Study, tid: int, index: int) -> bool:
    """What the pruner decided at evaluation `index`, without the reports that came after it: a
    continuation recomputing what a killed attempt reported decides as the uninterrupted run did."""
    ft = copy.deepcopy(frozen(study, tid))
    ft.intermediate_values = {k: v for k, v in ft.intermediate_values.items() if k <= index}
    return bool(study.pruner.prune(study, ft))


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a running trial in one transaction: Optuna's API commits
    each one on its own, and a trial sets ten or so, a few milliseconds each on SQLite. The same
    checks and writes as `Trial.set_user_attr`, through the RDB storage's own per-attribute
    method; any other storage takes them one by one."""
    if len(attrs) >= 2 and isinstance(trial.storage, JournalStorage):
        _append_user_attrs(trial.storage, trial_id(trial), attrs, late=False)
        trial._cached_frozen_trial.user_attrs.update(attrs)
        return
    backend = _rdb(trial.storage)
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    if len(attrs) < 2 or write is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    tid = trial_id(trial)
    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in attrs.items():
            write(session, models.TrialUserAttributeModel, tid, key, value)
    trial._cached_frozen_trial.user_attrs.update(attrs)


def set_finished_user_attrs(study: optuna.Study, tid: int, attrs: dict[str, Any]) -> None:
    """Set user attributes of a trial that has finished, which Optuna's API refuses (a finished
    trial is read-only there): written to its RDB tables in one transaction, and into this
    process's cached copy of the trial. For a fact that comes after the trial (GC deleted its
    final checkpoint); other processes' caches miss it until they restart, which is harmless for
    a fact that only readers (the dashboard, the report) use. On a journal: records marked late,
    which hpsearch's journal applies to a finished trial (Optuna's own reader ignores them)."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    storage = study._storage
    if isinstance(storage, JournalStorage):
        _append_user_attrs(storage, tid, attrs, late=True)
        return
    model = models.TrialUserAttributeModel
    with sa.orm.Session(_rdb(storage).engine) as db, db.begin():
        for key, value in attrs.items():
            row = db.scalars(
                sa.select(model).where(model.trial_id == tid, model.key == key)
            ).one_or_none()
            if row is None:
                db.add(model(trial_id=tid, key=key, value_json=json.dumps(value)))
            else:
                row.value_json = json.dumps(value)
    cached = storage.get_trial(tid)  # the cache's own object for a finished trial
    cached.user_attrs.update(attrs)


# -- the journal storage: Optuna's JournalStorage in a file of one machine ----------------------

_LATE = "hpsearch_late"  # a journal record's mark: applies to a trial that has finished


def open_journal(path: str) -> JournalStorage:
    """Optuna's study storage in the journal file `path` (see `hpsearch.lineage.journal` for what
    its file system must give), with what Optuna's file backend lacks for killed workers: its
    lock dies with its holder, and a record torn by a writer killed mid-append is cut off before
    the next append, which would otherwise glue onto it and make every later read fail."""
    return _Journal(_JournalFile(path))


def _append_user_attrs(
    storage: JournalStorage, tid: int, attrs: dict[str, Any], *, late: bool
) -> None:
    """User attributes of trial `tid`, a record each (as Optuna writes them), in one append."""
    with storage._thread_lock:
        worker = storage._replay_result.worker_id
        op = JournalOperation.SET_TRIAL_USER_ATTR
        logs = [{"op_code": op, "worker_id": worker, "trial_id": tid, "user_attr": {k: v}}
                for k, v in attrs.items()]  # fmt: skip
        if late:
            for log in logs:
                log[_LATE] = True
        storage._backend.append_logs(logs)
        storage._sync_with_backend()


class _Flock(BaseJournalFileLock):
    """An exclusive `flock` of `<journal>.lock`: the kernel releases it when its holder dies.
    (Optuna's lock files outlive a killed holder, and the next writer breaks them after 30 s,
    which would also break a live holder's lock that a slow disk kept longer.)"""

    def __init__(self, journal: str) -> None:
        self._path = journal + ".lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing it releases the lock


class _JournalFile(JournalFileBackend):
    def __init__(self, path: str) -> None:
        super().__init__(path, lock_obj=_Flock(path))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with get_lock_file(self._lock):
            cut_torn_tail(self._file_path)
            with open(self._file_path, "ab") as f:
                f.write(data.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())


def cut_torn_tail(path: str) -> int:
    """Cut a last record that does not end in a newline (a writer killed mid-append left it;
    called under the journal's lock, so no live writer is mid-append), saying so; the number of
    bytes cut. Optuna's reader skips such a record while it is last, so nothing read it."""
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return 0
        keep, pos = 0, end
        while pos > 0:  # back to the last newline, a block at a time
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
    print(f"warning: {path}: cut {end - keep} bytes of a record torn by a process killed while "
          "writing it (nothing had read it)", file=sys.stderr)  # fmt: skip
    return end - keep


class _NoLogs(BaseJournalBackend):
    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        yield from ()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise AssertionError("never written")  # pragma: no cover


class _Replay(JournalStorageReplayResult):
    """Optuna's replay, which also applies user attributes marked late to a finished trial."""

    def _apply_set_trial_user_attr(self, log: dict[str, Any]) -> None:
        t = self._trials.get(log["trial_id"])
        if log.get(_LATE) and t is not None and t.state.is_finished():
            t = copy.copy(t)
            t.user_attrs = {**t.user_attrs, **log["user_attr"]}
            self._trials[t._trial_id] = t
            return
        super()._apply_set_trial_user_attr(log)


class _Journal(JournalStorage):
    def __init__(self, backend: BaseJournalBackend) -> None:
        super().__init__(_NoLogs())  # Optuna's replay would read the file once for nothing
        with self._thread_lock:
            self._backend = backend
            self._replay_result = _Replay(self._worker_id_prefix)
            self._sync_with_backend()


class JournalReader:
    """The trials of a journal file as Optuna's replay makes them, read incrementally and only
    read: no lock taken, no file made, a record not yet whole left for the next look (for
    watchers such as `hpsearch.testing.faults`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._offset = 0
        self._replay = _Replay("reader-")

    def trials(self, study: str) -> list[FrozenTrial]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        whole = data[: data.rfind(b"\n") + 1]
        self._offset += len(whole)
        self._replay.apply_logs(json.loads(line) for line in whole.splitlines() if line)
        for sid, s in self._replay._studies.items():
            if s.study_name == study:
                return self._replay.get_all_trials(sid, None)
        return []
