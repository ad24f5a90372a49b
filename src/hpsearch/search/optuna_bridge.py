"""Every call into Optuna's private API, in one place, checked against the versions we test.

hpsearch drives Optuna's ask-and-tell interface from its own loop, and a few things that loop
needs have no public API: a trial's frozen state by id while it runs, a `Trial` handle for a trial
another process asked for, `tell` as `optimize` calls it (so a sampler may stop the study), and
copying a grid point to a retry. pyproject.toml pins optuna below the next major version;
`check_version` says so at run time when someone installs an untested one anyway.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import optuna
from optuna.trial import FrozenTrial

SUPPORTED_MAJORS = (4, 5)  # keep in step with the pin in pyproject.toml

# samplers whose randomness is all in their seed: reseeding them by (seed, trial number) makes a
# resumed study sample what an uninterrupted one would; others (grid, QMC) keep their plan in the
# study's storage and keep one seed
RESEEDED_SAMPLERS = frozenset(
    {"TPESampler", "RandomSampler", "CmaEsSampler", "GPSampler", "NSGAIISampler", "NSGAIIISampler"}
)

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
    a fact that only readers (the dashboard, the report) use."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    storage = study._storage
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
