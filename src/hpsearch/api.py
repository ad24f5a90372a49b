"""The Python API: define, run and read a study from Python (a notebook, a sweep script).

    study = hpsearch.run(task=DigitsMLP, config={"name": "digits", ...})
    study.best().params, study.dataframe()
    model = hpsearch.load("runs/digits").best_model()

`run` checks `config` exactly as a study file is checked (the same messages, with ``config``
where a file name would be), writes it as ``<run dir>/study.yaml`` with its places made absolute,
and runs that file as `hpsearch run` would: so every command (`hpsearch status
runs/digits/study.yaml`, `check-resume`, `resume`, `replay`) and `hpsearch.load` work on it
afterwards. A task class from the user's own files (not an installed package) is written as its
file, relative to the study file, so the `hpsearch` command imports it with no PYTHONPATH set.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import site
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import torch
import yaml

from hpsearch.config.reader import load_study_file, load_study_mapping
from hpsearch.config.schema import StudySettings
from hpsearch.errors import HpsearchError, StudyFileError, UsageError
from hpsearch.report.status import StudyHandle
from hpsearch.search.records import TrialRecord
from hpsearch.search.session import Session
from hpsearch.search.summary import Summary, format_summary
from hpsearch.task import Task
from hpsearch.training.state import expand_aliases, load_model_state

__all__ = ["STUDY_FILE", "Study", "load", "run"]

STUDY_FILE = "study.yaml"  # what `run` writes into the run directory
# taskload's module names for a task imported from a file: a new process imports it by its path
_FILE_MODULE = "_hpsearch_task_"


@dataclass
class Study(StudyHandle):
    """A study opened from Python: `view()`, `dataframe()`, `best()` (see `StudyHandle`), the
    best model, and, after `run`, the run's `summary`. Close it (or use `with`) to release the
    database."""

    study_file: str = ""
    summary: Summary | None = None

    def best_model(self, trial: int | None = None, *, device: str = "cpu") -> torch.nn.Module:
        """The model of the best completed trial (or of trial number `trial`), rebuilt with
        `Task.model(hparams)` from its final checkpoint's hyperparameters and weights, in eval
        mode. An error says so when that checkpoint was deleted by garbage collection."""
        number = self._trial_number(trial)
        ckpt = self._final_checkpoint(number)
        loaded = self.session.store.load(ckpt, groups=("model",))
        hparams = dict(loaded.state["hparams"])
        model = self.session.task().model(hparams)
        tensors = expand_aliases(loaded.tensors["model"], loaded.state.get("model_aliases"))
        load_model_state(model, tensors)
        return model.to(device).eval()

    def _trial_number(self, trial: int | None) -> int:
        if trial is not None:
            return trial
        best = self.best()
        if best is None:
            raise HpsearchError(f"study {self.session.study_name} has no completed trial yet")
        return best.number

    def _final_checkpoint(self, number: int) -> str:
        name = self.session.study_name
        trials = {t.number: t for t in self.session.study.get_trials(deepcopy=False)}
        if number not in trials:
            raise UsageError(f"study {name} has no trial {number} (it has {len(trials)} trials)")
        ckpt = TrialRecord.of(trials[number]).final_checkpoint
        if ckpt is None:
            raise HpsearchError(
                f"trial {number} of study {name} has no final checkpoint (it is "
                f"{trials[number].state.name}): only a trial that completed has one"
            )
        committed = {r.id for r in self.session.lineage.checkpoints(statuses=("committed",))}
        if ckpt not in committed:
            keep = self.session.settings.checkpoints.keep_best
            raise HpsearchError(
                f"trial {number}'s final checkpoint {ckpt} was deleted by garbage collection: "
                f"checkpoints.keep_best ({keep}) keeps the final checkpoints of the best {keep} "
                "trials only; raise keep_best to keep more"
            )
        return ckpt

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(
    task: type[Task] | str | None = None,
    config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    classic: bool = False,
    gpus: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    budget: float | None = None,
    debug: bool = False,
) -> Study:
    """Create or continue a study until it is done: its tree grown, its budget spent, or
    `trials` (default `trials.n`) finished trials. `budget` is `hpsearch run --budget`: full
    runs from scratch to spend, in place of `trials.budget`; `debug` is `--debug` (each failed
    attempt's traceback printed as it happens; they are kept in the run's logs/ anyway).

    `config` is what a study file holds, as a mapping (tuples read as lists), or the path of a
    study file. `task` is a `Task` subclass or "path/to/file.py:Class" (then `config` has no
    `task` key). Relative paths are resolved against `base_dir` (default: the current
    directory). `workers` > 1 starts `hpsearch worker` processes, which import the task by name:
    a class defined in `__main__` (a notebook) runs with one worker only. With `device: cuda`,
    each worker gets its own GPU, as with `hpsearch run --workers N`; `gpus` is `--gpus`
    ("0,2", "0,0,1,1": which devices, in worker order). Returns the `Study`, with the run's
    `summary`.
    """
    if trials is not None and trials < 1:
        raise UsageError(f"trials must be >= 1, got {trials}")
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    path = _study_file(task, config, os.fspath(base_dir or os.getcwd()), workers)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as `hpsearch run`: it prints its own
    if budget is not None and budget <= 0:
        raise UsageError(f"budget must be > 0 full runs, got {budget}")
    summary, settings = _run_workers(path, trials, workers, storage, classic, gpus, budget, debug)
    print(format_summary(summary, os.path.join(settings.checkpoints.dir, summary.study)))
    study = load(path, storage=storage, classic=classic)
    study.summary = summary
    return study


def load(
    study: str | os.PathLike[str], *, storage: str | None = None, classic: bool = False
) -> Study:
    """Open an existing study from its study file or its run directory (where `run` wrote
    ``study.yaml``) for reading: `hpsearch.load("runs/digits").best_model()`."""
    path = os.fspath(study)
    if os.path.isdir(path):
        file = os.path.join(path, STUDY_FILE)
        if not os.path.isfile(file):
            raise UsageError(
                f"{path}: no {STUDY_FILE} in this directory (hpsearch.run writes one into the "
                "run directory it makes); for a study run from a study file, pass that file"
            )
        path = file
    elif not os.path.exists(path):
        raise UsageError(f"{path}: no such study file or run directory")
    session = Session.open(path, storage=storage, classic=classic, create=False)
    return Study(session, study_file=path)


def _study_file(task: Any, config: Any, base_dir: str, workers: int) -> str:
    """The study file to run: `config` itself when it is a path, else the one written for it."""
    if isinstance(config, str | os.PathLike):
        if task is not None:
            raise UsageError(
                "task= goes with config given as a mapping: a study file names its own task"
            )
        return os.path.join(base_dir, os.fspath(config))
    if not isinstance(config, Mapping):
        raise UsageError(
            "config must be a mapping (what a study file holds: name, objective, warmup, "
            f"trials, search_space, ...) or the path of a study file, got {type(config).__name__}"
        )
    _check_tree(config)
    doc = dict(config)
    if task is not None:
        if "task" in doc:
            raise UsageError("the task is given twice: as task= and as config['task']; keep one")
        doc["task"] = _task_spec(task, workers)
    settings = load_study_mapping(doc, base_dir=base_dir)
    if isinstance(task, type) and (before := _named_before(settings, task)) is not None:
        settings = dataclasses.replace(settings, task=before)
    return _write(settings, doc)


def _named_before(settings: StudySettings, cls: type) -> str | None:
    """The module spec an existing study of this run directory names `cls` by (an hpsearch
    before task files were written by path did so): kept, since the study's fingerprint holds
    it and a new spelling would be refused as another task."""
    path = os.path.join(settings.run_dir, STUDY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            before = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    spec = f"{cls.__module__}:{cls.__name__}"
    return spec if isinstance(before, dict) and before.get("task") == spec else None


_MAX_DEPTH = 100  # a study file is a few levels deep; its YAML reader refuses far less


def _check_tree(config: Mapping[str, Any]) -> None:
    """Refuse (StudyFileError naming the key path) a mapping that holds itself, or is nested
    past any study's depth: it would only end in a RecursionError. A value used twice is fine;
    it is written out twice."""

    def walk(value: Any, path: list[str], inside: dict[int, str]) -> None:
        if not isinstance(value, Mapping | list | tuple):
            return
        key = ".".join(path)
        if id(value) in inside:
            outer = inside[id(value)]
            raise StudyFileError(
                "config", key, f"refers back to {outer or 'the whole config'}, which holds it: a "
                "study is a tree of plain values (mappings, lists, numbers, strings); give a copy"
            )  # fmt: skip
        if len(path) > _MAX_DEPTH:
            raise StudyFileError("config", key[:200], f"nested more than {_MAX_DEPTH} levels deep")
        inside[id(value)] = key
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for k, v in items:
            walk(v, [*path, str(k)], inside)
        del inside[id(value)]

    walk(config, [], {})


def _task_spec(task: Any, workers: int) -> str:
    """The `task:` line naming a Task class or spec; refuses what no process could import."""
    if isinstance(task, str):
        return task
    if not isinstance(task, type):
        raise UsageError(
            f"task must be a Task subclass or 'path/to/file.py:Class', got {type(task).__name__}"
        )
    cls: type = task
    module = sys.modules.get(cls.__module__)
    found = getattr(module, cls.__name__, None)
    if cls.__qualname__ != cls.__name__ or found is not cls:
        raise UsageError(
            f"task {cls.__qualname__}: hpsearch imports the task by module and name; define "
            "the class at the top level of a module (or a notebook cell), not inside a function"
        )
    if cls.__module__ == "__main__":
        if workers > 1:
            raise UsageError(
                f"task {cls.__name__} is defined in __main__ (a notebook, or a script run "
                "directly), which worker processes cannot import: run it with workers=1, or move "
                f"it into a .py file and pass task='that_file.py:{cls.__name__}'"
            )
        return f"__main__:{cls.__name__}"
    file = getattr(module, "__file__", None)
    user_file = file and file.endswith(".py") and not _installed(cls.__module__, file)
    if file and (cls.__module__.startswith(_FILE_MODULE) or user_file):
        # imported from the user's own files (a notebook's folder, a directory put on
        # sys.path by hand): a command run elsewhere, or by the `hpsearch` script whose
        # sys.path holds neither, finds it by its path only (written relative to the study file)
        return f"{os.path.abspath(file)}:{cls.__name__}"
    return f"{cls.__module__}:{cls.__name__}"


def _installed(module: str, file: str) -> bool:
    """Whether every Python process imports `module` as this one did: it lies in the standard
    library or an installed package, or is hpsearch's own."""
    if module.partition(".")[0] == "hpsearch":
        return True
    places = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    places |= {*site.getsitepackages(), site.getusersitepackages()}
    real = os.path.realpath(file)
    return any(real.startswith(os.path.realpath(p) + os.sep) for p in places)


class _Dumper(yaml.SafeDumper):
    """A study file may hold no YAML aliases: one object used twice is written out twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _write(settings: StudySettings, doc: dict[str, Any]) -> str:
    """Write the checked study as `<run dir>/study.yaml`, with the storage and checkpoint places
    as the check resolved them (absolute), so the file means the same from there, and a task
    file relative to it (the project moves with its runs)."""
    task = settings.task
    file, _, cls = task.rpartition(":")
    if file.endswith(".py") and os.path.isabs(file):
        task = f"{os.path.relpath(file, settings.run_dir)}:{cls}"
    doc = {**doc, "task": task, "storage": settings.storage}
    ck = settings.checkpoints
    places = {"dir": ck.dir, **({"cache_dir": ck.cache_dir} if ck.cache_dir else {})}
    doc["checkpoints"] = {**(doc.get("checkpoints") or {}), **places}
    os.makedirs(settings.run_dir, exist_ok=True)
    path = os.path.join(settings.run_dir, STUDY_FILE)
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("# written by hpsearch.run(config=...): the study as given, places absolute\n")
        f.write(text)
    os.replace(tmp, path)
    return path


def _run_workers(
    path: str, trials: int | None, workers: int, storage: str | None, classic: bool,
    gpus: str | None, budget: float | None, debug: bool,
) -> tuple[Summary, StudySettings]:  # fmt: skip
    """`hpsearch run --workers N [--gpus ...]`: this process is one worker, N-1 more are
    started, each on its own GPU when the study runs on CUDA -- the very code the command
    runs."""
    from hpsearch.cli import check_workers, run_with_workers

    settings = load_study_file(path, budget=budget)
    args = argparse.Namespace(study=path, storage=storage, classic=classic, trials=trials,
                              workers=workers, gpus=gpus, debug=debug, budget=budget,
                              processes=None)  # fmt: skip
    summary, extra = run_with_workers(args, settings)
    check_workers(extra, summary)
    return summary, settings
