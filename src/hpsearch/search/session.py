"""Everything a command opens for a study file: settings, the Optuna study, the checkpoint tree,
the checkpoint store and the task. Commands that only read (status, plot, export) use it too."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy as sa

from hpsearch.checkpoint import CheckpointStore, ForeignStoreRoot, open_store
from hpsearch.config import (
    StudySettings,
    TrainingSettings,
    check_budgets,
    load_study_file,
    make_pruner,
)
from hpsearch.errors import StudyFileError, TaskError, UsageError
from hpsearch.lineage import (
    Lineage,
    configure_sqlite,
    create_schema,
    database_url,
    engine_kwargs,
    open_lineage,
    retry_if_busy,
)
from hpsearch.lineage.journal import check_journal_place, journal_file
from hpsearch.lineage.schema import create_engine
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search.pruning import TreePruner
from hpsearch.search.records import StudyKey, set_study_attr, study_attr

if TYPE_CHECKING:  # the task and its checks import torch: the commands that only read never do
    from hpsearch.task import Task


@dataclass
class Session:
    settings: StudySettings
    classic: bool
    study_name: str
    storage_url: str
    study: optuna.Study
    lineage: Lineage
    store: CheckpointStore
    _task: Task | None = field(default=None, repr=False)
    _datasets: tuple[Any, Any] | None = field(default=None, repr=False)
    # the lineage's, and Optuna's too on a database (a journal keeps Optuna's study in its file)
    _engine: sa.Engine | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        path: str,
        *,
        storage: str | None = None,
        classic: bool = False,
        create: bool = True,
        settings: StudySettings | None = None,
    ) -> Session:
        """Open (or create) the study of a study file. `classic` selects the from-scratch twin
        study `<name>-classic`, which lives beside the forking one for comparisons."""
        settings = settings or load_study_file(path, writable=create)
        url = storage or settings.storage
        if url.rstrip("/") in ("sqlite:", "sqlite:/") or ":memory:" in url:  # --storage too
            raise UsageError(
                f"--storage {url}: an in-memory database is refused: every process (and every "
                "engine) would see its own empty study; give a file, e.g. sqlite:///study.db"
            )
        task, datasets = _checked_task(settings) if create else (None, None)
        name = settings.name + ("-classic" if classic else "")
        optuna_storage, engine = _storage(settings, url, create=create)
        study = _study(settings, optuna_storage, name, url, create=create, classic=classic)
        study.pruner = make_pruner(settings)
        if settings.tree is not None and not classic:  # its warm-up from a node's fork, its plan
            study.pruner = TreePruner(study.pruner, settings.tree)
        lineage = open_lineage(url, name, engine=engine)  # one pool for both (RDB)
        try:
            ck = settings.checkpoints
            store = open_store(
                _join(ck.dir, name), compression=ck.compression,
                storage_options=ck.storage_options, cache_dir=ck.cache_dir,
                cache_max_bytes=ck.cache_max_bytes,
            )  # fmt: skip
        except ForeignStoreRoot as exc:
            raise StudyFileError(settings.path, "checkpoints.dir", str(exc)) from None
        return cls(settings, classic, name, url, study, lineage, store, task, datasets, engine)

    def task(self) -> Task:
        if self._task is None:
            from hpsearch.config.taskload import load_task
            from hpsearch.training.forkcheck import check_forkable

            cls = load_task(self.settings.task, study_path=self.settings.path)
            check_forkable(self.settings, cls)
            self._task = cls()
        return self._task

    def datasets(self) -> tuple[Any, Any]:
        if self._datasets is None:
            self._datasets = self.task().datasets()
        return self._datasets

    def sizes(self) -> tuple[int, int]:
        """The task's (training, validation) set sizes."""
        train, val = self.datasets()
        return len(train), len(val)

    def samples_per_epoch(self) -> int:
        return _length(self.settings, self.datasets()[0])

    def attr(self, key: StudyKey, default: Any = None) -> Any:
        return study_attr(self.study, key, default)

    def set_attr(self, key: StudyKey, value: Any) -> None:
        set_study_attr(self.study, key, value)

    def close(self) -> None:
        self.lineage.close()
        if self._engine is not None:
            self._engine.dispose()


def _storage(
    settings: StudySettings, url: str, *, create: bool
) -> tuple[optuna.storages.BaseStorage, sa.Engine]:
    """Optuna's storage of the study and the engine of the lineage's database: one RDBStorage
    and its engine on a database (sqlite configured for WAL), or a journal file and the SQLite
    database of its lineage beside it. A sqlite file or a journal that does not exist is an
    error unless the study is being created. Tables are created race-free: several processes
    may open a brand-new study database at once."""
    journal = journal_file(url)
    if journal is not None:
        check_journal_place(journal)  # before anything is made there
    if url.startswith("sqlite:///") or journal is not None:
        file = journal if journal is not None else url[len("sqlite:///") :]
        if not create and not os.path.exists(file):
            what = "journal" if journal is not None else "database"
            raise UsageError(
                f"{settings.path}: no study {what} at {file}: run `hpsearch run "
                f"{settings.path}` first"
            )
        os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    if journal is not None:
        engine = create_engine(url)
        return bridge.open_journal(journal), engine
    driver_url = database_url(url)  # a UsageError naming the extra when no driver is installed
    try:
        rdb = create_schema(
            driver_url,
            lambda: optuna.storages.RDBStorage(driver_url, engine_kwargs=engine_kwargs(driver_url)),
        )
        configure_sqlite(rdb.engine)
    except Exception as exc:  # SQLAlchemy/driver errors vary by backend
        raise UsageError(
            f"{settings.path}: storage: cannot open {url!r}: {type(exc).__name__}: {exc}. "
            "Check the URL (sqlite:///path.db, journal:///path.journal or "
            "postgresql://user@host/db) and that the database server is running."
        ) from None
    return rdb, rdb.engine


def _study(
    settings: StudySettings,
    rdb: optuna.storages.BaseStorage,
    name: str,
    url: str,
    *,
    create: bool,
    classic: bool,
) -> optuna.Study:
    """The Optuna study `name`, created if asked; its direction must be the file's."""
    direction = settings.objective.direction
    if create:  # several workers may open a brand-new study database at one moment
        study = retry_if_busy(
            lambda: optuna.create_study(
                study_name=name, storage=rdb, direction=direction, load_if_exists=True
            )
        )
        retry_if_busy(lambda: _name_the_objective(study, settings.objective.metric))
    else:
        try:
            study = optuna.load_study(study_name=name, storage=rdb)
        except KeyError:
            raise UsageError(
                f"{settings.path}: no study named {name!r} in {url}: run `hpsearch run "
                f"{settings.path}{' --no-fork' if classic else ''}` first"
            ) from None
    if study.direction.name.lower() != direction:
        raise UsageError(
            f"{settings.path}: objective.direction: the study {name!r} in the database was "
            f"created to {study.direction.name.lower()}, the file says {direction}; use "
            "another study name to change it"
        )
    return study


def _name_the_objective(study: optuna.Study, metric: str) -> None:
    """Tell Optuna what the objective is called, so the dashboard shows "val_accuracy", not
    "Objective 0". Experimental in Optuna (since 3.2) but stable in use: its warning is noise."""
    if study.metric_names == [metric]:  # read with the study's attributes: no write each run
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])


def _checked_task(settings: StudySettings) -> tuple[Task, tuple[Any, Any]]:
    """The task, built and checked against the study file (forkable keys, budgets in samples)
    before anything is created: a study-file error found here leaves no database behind."""
    from hpsearch.config.taskload import load_task
    from hpsearch.training.forkcheck import check_forkable

    cls = load_task(settings.task, study_path=settings.path)
    check_forkable(settings, cls)
    task = cls()
    datasets = task.datasets()
    check_budgets(settings, _length(settings, datasets[0]))
    return task, datasets


def _length(settings: StudySettings, train: Any) -> int:
    if not isinstance(train, Sized):
        raise TaskError(
            f"{settings.path}: task: datasets() returned a training set without len(): "
            "hpsearch needs a map-style dataset (with __len__ and __getitem__)"
        )
    return len(train)


def _join(root: str, name: str) -> str:
    if "://" in root:
        return root.rstrip("/") + "/" + name
    return os.path.join(root, name)


# -- what the base checkpoint depends on ----------------------------------------------------------


FINGERPRINT_VERSION = 2  # 2: the strategy, the tree, the search space, the objective
_VERSION = "_version"
# the settings a version-1 fingerprint held: a study it recorded is compared on these only
_FIRST_KEYS = ("task", "seed", "warmup.", "trials.epochs", "trials.steps", "schedule",
               "training.", "data.")  # fmt: skip


def fingerprint(settings: StudySettings) -> dict[str, Any]:
    """The study-file settings that say what the study's trials are, as flat `key: value`
    pairs: what the base checkpoint and every trial's schedule were made with, the tree's shape
    and rungs, the budgets, the search space and the objective. Changing one under an existing
    study would mix trials of two different experiments (a tree that is no longer any one
    tree), so `check_fingerprint` refuses it.
    What only steers the search from here on (the sampler, the pruner, `trials.n`, retries,
    evaluation interval, checkpoints, loggers) is not in it."""
    task = settings.task
    file, sep, cls = task.rpartition(":")
    if sep and (os.sep in file or file.endswith(".py")):
        task = f"{os.path.basename(file)}:{cls}"  # a moved project is the same task
    w, t, sch = settings.warmup, settings.trials, settings.schedule
    out: dict[str, Any] = {
        "task": task,
        "seed": settings.seed,
        "warmup.epochs": w.epochs,
        "warmup.steps": w.steps,
        # the schedule's (and a task scheduler's) length is warm-up plus one trial
        "trials.epochs": t.epochs,
        "trials.steps": t.steps,
        "schedule": dataclasses.asdict(sch) if sch is not None else None,
    }
    if t.processes != 1:  # another number of ranks is another run (hpsearch.training.ranks)
        out["trials.processes"] = t.processes
    for key, value in sorted(w.hparams.items()):
        out[f"warmup.hparams.{key}"] = value
    out["strategy"] = settings.strategy
    out["objective.metric"] = settings.objective.metric
    if settings.tree is not None:  # its budget sizes it; a classic search's only ends it
        out["trials.budget"] = t.budget
        tree = dataclasses.asdict(settings.tree)
        for key, value in sorted(tree.pop("hparams").items()):
            out[f"tree.hparams.{key}"] = value
        if tree["promotion"] == "sync":  # as every tree was before `tree.promotion` existed
            del tree["promotion"]
        out |= {f"tree.{key}": value for key, value in tree.items()}
    for key, param in settings.search_space.items():
        entry = {k: v for k, v in dataclasses.asdict(param).items() if v is not None}
        entry.pop("name")
        out[f"search_space.{key}"] = entry
    plain = dataclasses.asdict(TrainingSettings())
    for key, value in dataclasses.asdict(settings.training).items():
        if value != plain[key]:  # only what a study sets: a study made before them is unchanged
            out[f"training.{key}"] = value
    for key, value in sorted(dataclasses.asdict(settings.data).items()):
        if key != "num_workers":  # the data order does not depend on it (by design)
            out[f"data.{key}"] = value
    out[_VERSION] = FINGERPRINT_VERSION
    return json.loads(json.dumps(out))  # as the database gives it back


def check_fingerprint(session: Session) -> None:
    """Refuse (UsageError, exit 2) a study file whose base-defining settings differ from those
    the study was created with; a study made before fingerprints existed adopts the current one."""
    now = fingerprint(session.settings)
    old = session.attr("fingerprint")
    if not isinstance(old, dict):
        session.set_attr("fingerprint", now)
        return
    compared = set(old) | set(now)
    if old.get(_VERSION) != FINGERPRINT_VERSION:
        # made by an hpsearch that recorded fewer settings: compare those, adopt the others
        compared = {k for k in compared if k.startswith(_FIRST_KEYS)}
    changed = [
        f"  {key}: {_show(old.get(key, '(unset)'))} -> {_show(now.get(key, '(unset)'))}"
        for key in sorted(compared - {_VERSION})
        if old.get(key, "(unset)") != now.get(key, "(unset)")
    ]
    if changed and _anything_made(session):
        raise UsageError(
            f"{session.settings.path}: the study {session.study_name!r} in "
            f"{session.storage_url} was created with other settings, which its checkpoints "
            "and its trials depend on:\n" + "\n".join(changed) + "\nthe study would no "
            "longer be one experiment: give the file a new `name` to start a new study beside "
            "this one (the database and checkpoint root can stay), or revert the change"
        )
    if old != now:  # nothing depends on what changed yet, or the study's record is upgraded
        session.set_attr("fingerprint", now)


def _anything_made(session: Session) -> bool:
    """Did a run of this study train anything: a checkpoint (of the warm-up or any trial) or a
    trial? A first run that failed before (a task error, a bad hyperparameter) did not."""
    if session.study.get_trials(deepcopy=False):
        return True
    return bool(session.lineage.checkpoints(statuses=("pending", "committed", "unusable")))


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
