"""The study file: YAML in, frozen typed settings out, and every mistake named by file and key path.

    settings = load_study_file("studies/digits.yaml")
    study = optuna.create_study(
        study_name=settings.name, storage=settings.storage,
        direction=settings.objective.direction,
        sampler=make_sampler(settings, settings.seed), pruner=make_pruner(settings),
        load_if_exists=True,
    )
    hparams = trial_hparams(settings, suggest(trial, settings))

Everything is checked when the file is loaded, so a mistake stops the command before any training
starts, as a `StudyFileError` whose message reads ``<file>: <key.path>: <rule, bad value, fix>``.
The YAML is parsed with `yaml.safe_load` only.

The settings are frozen dataclasses. The mappings they hold (`WarmupSettings.hparams`,
`StudySettings.search_space`, `ComponentSettings.kwargs`) are plain dicts so that the settings
pickle into worker processes; treat them as read-only and use `warmup_hparams` / `trial_hparams`
for copies you may change.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import optuna
import yaml

from hpsearch.errors import StudyFileError

if TYPE_CHECKING:
    from hpsearch.task import Task

__all__ = [
    "FORKABLE",
    "CheckpointSettings",
    "ComponentSettings",
    "DataSettings",
    "Objective",
    "Param",
    "ScheduleSettings",
    "StudySettings",
    "TrialSettings",
    "WarmupSettings",
    "check_forkable",
    "load_study_file",
    "make_pruner",
    "make_sampler",
    "suggest",
    "trial_hparams",
    "warmup_hparams",
]

FORKABLE = ("lr", "weight_decay", "momentum", "betas", "eps", "dropout", "batch_size")
"""Hyperparameters a fork applies to a restored state without the task's help (SPEC section 5)."""

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CUDA = re.compile(r"^cuda:\d+$")
# PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string; where a number is expected, take
# it as the float the user meant.
_EXP_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


# -- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """The metric `Task.evaluate` returns that Optuna optimizes."""

    metric: str
    direction: str  # "minimize" | "maximize"


@dataclass(frozen=True)
class CheckpointSettings:
    """Where and how often checkpoints are written; exactly one of `every`/`every_steps` is set."""

    dir: str  # an absolute local path, or an fsspec URL ("s3://bucket/prefix") kept as written
    every: float | None  # epochs between checkpoints
    every_steps: int | None  # optimizer steps between checkpoints
    keep_best: int
    compression: str  # "none" | "zstd"
    async_save: bool  # the YAML key `async`


@dataclass(frozen=True)
class WarmupSettings:
    """The shared warm-up; exactly one of `epochs`/`steps` is set."""

    epochs: float | None
    steps: int | None
    hparams: dict[str, Any]  # read-only; always holds lr (float) and batch_size (int)


@dataclass(frozen=True)
class TrialSettings:
    """Each trial's budget after its fork; exactly one of `epochs`/`steps` and one of
    `eval_every`/`eval_every_steps` is set."""

    n: int
    epochs: float | None
    steps: int | None
    eval_every: float | None  # epochs between evaluations reported to the pruner
    eval_every_steps: int | None
    retries: int  # how many times a trial that crashed on an error is continued
    heartbeat_s: float
    grace_s: float
    max_failures: int = 3  # trials of one run that fail for good (errors) before the run stops


@dataclass(frozen=True)
class DataSettings:
    """Data loading."""

    num_workers: int


@dataclass(frozen=True)
class Param:
    """One search-space entry. Ranges have `low`, `high`, `log`, `step`; categoricals `choices`."""

    name: str
    kind: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None  # None for a continuous float range; >= 1 for int
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class ScheduleSettings:
    """The LR schedule as a fraction of the whole run (warm-up + trial budget)."""

    name: str  # "cosine" | "linear" | "constant"
    warmup: float  # fraction of the run spent ramping up, in [0, 1)
    final: float  # final LR as a fraction of the base LR, in [0, 1]


@dataclass(frozen=True)
class ComponentSettings:
    """An Optuna sampler or pruner: a class name in its module and keyword arguments (read-only)."""

    name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class StudySettings:
    """A validated study file. Paths are absolute strings; URLs are kept as written."""

    path: str  # the study file as given
    base_dir: str  # its directory (absolute): relative paths in the file are resolved against it
    run_dir: str  # <base_dir>/runs/<name>
    name: str
    task: str  # "package.module:Class" or "/absolute/path/file.py:Class"
    seed: int
    device: str
    objective: Objective
    storage: str
    checkpoints: CheckpointSettings
    warmup: WarmupSettings
    trials: TrialSettings
    data: DataSettings
    search_space: dict[str, Param]  # read-only, in file order
    schedule: ScheduleSettings | None
    sampler: ComponentSettings
    pruner: ComponentSettings  # `pruner: null` is stored as NopPruner


# -- reading values -------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _number(value: Any) -> Any:
    if isinstance(value, str) and _EXP_FLOAT.match(value):
        return float(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Bounds:
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def ok(self, v: float) -> bool:
        return not (
            (self.gt is not None and not v > self.gt)
            or (self.ge is not None and not v >= self.ge)
            or (self.lt is not None and not v < self.lt)
            or (self.le is not None and not v <= self.le)
        )

    def text(self) -> str:
        parts = [
            f"{op} {_fmt(b)}"
            for op, b in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            if b is not None
        ]
        return " and ".join(parts)


def _fmt(v: Any) -> str:
    """A bound for a message: 0 rather than 0.0, 1e-05 as Python writes it."""
    return str(int(v)) if _is_number(v) and float(v).is_integer() else repr(v)


# Sanity ranges of the hyperparameters hpsearch knows, applied to warm-up values and search ranges.
_KNOWN = {
    "lr": _Bounds(gt=0),
    "dropout": _Bounds(ge=0, lt=1),
    "weight_decay": _Bounds(ge=0),
    "eps": _Bounds(gt=0),
    "momentum": _Bounds(ge=0, le=1),
}


class _Reader:
    """Checks raw YAML values; every failure becomes a StudyFileError for this file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> NoReturn:
        raise StudyFileError(self.path, key, message)

    def mapping(
        self,
        value: Any,
        key: str,
        allowed: Iterable[str],
        required: Mapping[str, str] | None = None,
        *,
        optional: bool = False,
    ) -> dict[str, Any]:
        """A mapping with only `allowed` keys; `required` maps each required key to an example."""
        allowed = list(allowed)
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping with keys {', '.join(allowed)}, got {_show(value)}")
        for k in value:
            if not isinstance(k, str):
                self.fail(key, f"keys must be strings, got {_show(k)}")
            if k not in allowed:
                self.fail(
                    _join(key, k),
                    f"unknown key{_did_you_mean(k, allowed)} (allowed here: {', '.join(allowed)})",
                )
        for k, example in (required or {}).items():
            if k not in value:
                self.fail(_join(key, k), f"required key is missing; add it, e.g. `{example}`")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, got {_show(value)}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {_show(value)}")
        return value

    def choice(self, value: Any, key: str, options: Iterable[str]) -> str:
        options = list(options)
        if not isinstance(value, str) or value not in options:
            hint = _did_you_mean(value, options) if isinstance(value, str) else ""
            self.fail(key, f"must be one of {', '.join(options)}, got {_show(value)}{hint}")
        return value

    def real(self, value: Any, key: str, bounds: _Bounds = _Bounds()) -> float:
        value = _number(value)
        if not _is_number(value) or not math.isfinite(value):
            rule = f" {bounds.text()}" if bounds.text() else ""
            self.fail(key, f"must be a number{rule}, got {_show(value)}")
        if not bounds.ok(value):
            self.fail(key, f"must be {bounds.text()}, got {_show(value)}")
        return float(value)

    def integer(self, value: Any, key: str, bounds: _Bounds = _Bounds()) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            rule = f" {bounds.text()}" if bounds.text() else ""
            self.fail(key, f"must be an integer{rule}, got {_show(value)}")
        if not bounds.ok(value):
            self.fail(key, f"must be an integer {bounds.text()}, got {_show(value)}")
        return value

    def exactly_one(
        self, section: dict[str, Any], key: str, a: str, b: str, *, required: bool
    ) -> str | None:
        """Which of the alternative keys `a`/`b` the section gives (an error if both)."""
        if a in section and b in section:
            self.fail(
                key,
                f"give either {a} or {b}, not both"
                f" (got {a}={_show(section[a])}, {b}={_show(section[b])})",
            )
        if a in section:
            return a
        if b in section:
            return b
        if required:
            self.fail(key, f"required: give {a}: <number> or {b}: <integer>")
        return None


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


# -- loading --------------------------------------------------------------------------------------

_TOP = {
    "name": "name: digits-mlp",
    "task": "task: path/to/file.py:MyTask",
    "seed": None,
    "device": None,
    "objective": "objective: {metric: val_accuracy, direction: maximize}",
    "storage": None,
    "checkpoints": None,
    "warmup": "warmup: {epochs: 5, hparams: {lr: 1.0e-3, batch_size: 64}}",
    "trials": "trials: {n: 20, epochs: 2}",
    "data": None,
    "search_space": "search_space: {lr: {float: [1.0e-5, 1.0e-1], log: true}}",
    "schedule": None,
    "sampler": None,
    "pruner": None,
}


def load_study_file(path: str | os.PathLike[str]) -> StudySettings:
    """Read and validate a study file; raise StudyFileError naming the key path and the fix."""
    shown = os.fspath(path)
    r = _Reader(shown)
    try:
        with open(shown, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        r.fail("", f"file not found (looked for {os.path.abspath(shown)}); check the path")
    except (OSError, UnicodeDecodeError) as e:
        r.fail("", f"cannot read the file: {e}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        detail = f"{problem} ({context})" if context else problem
        r.fail("", f"invalid YAML{where}: {detail}; fix the syntax there")
    if raw is None:
        r.fail(
            "",
            "the file is empty; a study needs name, task, objective, warmup, trials and "
            "search_space",
        )
    required = {k: v for k, v in _TOP.items() if v is not None}
    raw = r.mapping(raw, "", _TOP, required)

    # Sections are checked in the order the SPEC example lists them; the first mistake is raised.
    base_dir = os.path.dirname(os.path.abspath(shown))
    name = _name(r, raw["name"])
    run_dir = os.path.join(base_dir, "runs", name)
    task = _task(r, raw["task"], base_dir)
    seed = r.integer(raw.get("seed", 0), "seed", _Bounds(ge=0, lt=2**32))
    device = _device(r, raw.get("device", "cpu"))
    objective = _objective(r, raw["objective"])
    storage = _storage(r, raw.get("storage"), base_dir, run_dir)
    checkpoints = _checkpoints(r, raw.get("checkpoints"), base_dir, run_dir)
    warmup = _warmup(r, raw["warmup"])
    trials = _trials(r, raw["trials"])
    data = _data(r, raw.get("data"))
    search_space = _search_space(r, raw["search_space"], warmup.hparams)
    return StudySettings(
        path=shown,
        base_dir=base_dir,
        run_dir=run_dir,
        name=name,
        task=task,
        seed=seed,
        device=device,
        objective=objective,
        storage=storage,
        checkpoints=checkpoints,
        warmup=warmup,
        trials=trials,
        data=data,
        search_space=search_space,
        schedule=_schedule(r, raw.get("schedule")),
        sampler=_sampler(r, raw.get("sampler"), search_space, seed),
        pruner=_pruner(r, raw.get("pruner", {"name": "MedianPruner"})),
    )


def _name(r: _Reader, value: Any) -> str:
    name = r.string(value, "name")
    if not NAME_PATTERN.match(name):
        fixed = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lstrip("._-")[:100] or "my-study"
        r.fail(
            "name",
            f"must be 1-100 letters, digits, '_', '.' or '-' starting with a letter or digit "
            f"(it becomes a directory name), got {name!r}; use e.g. {fixed!r}",
        )
    return name


def _task(r: _Reader, value: Any, base_dir: str) -> str:
    spec = r.string(value, "task")
    module, sep, cls = spec.rpartition(":")
    form = "write it as 'package.module:Class' or 'path/to/file.py:Class'"
    if not sep or not module or not cls.isidentifier():
        r.fail("task", f"must name a module or .py file and a class, got {spec!r}; {form}")
    if module.endswith(".py"):
        file = os.path.normpath(os.path.join(base_dir, os.path.expanduser(module)))
        if not os.path.isfile(file):
            r.fail(
                "task",
                f"file not found: {file} (a relative path is resolved against the study file's "
                f"directory, {base_dir}); fix the path",
            )
        return f"{file}:{cls}"
    if not all(part.isidentifier() for part in module.split(".")):
        r.fail("task", f"{module!r} is neither a module path nor a .py file; {form}")
    return spec


def _device(r: _Reader, value: Any) -> str:
    if not isinstance(value, str) or not (value in ("cpu", "cuda") or _CUDA.match(value)):
        r.fail("device", f"must be cpu, cuda or cuda:N (N a GPU index), got {_show(value)}")
    return value


def _objective(r: _Reader, value: Any) -> Objective:
    required = {"metric": "metric: val_accuracy", "direction": "direction: maximize"}
    section = r.mapping(value, "objective", required, required)
    return Objective(
        metric=r.string(section["metric"], "objective.metric"),
        direction=r.choice(section["direction"], "objective.direction", ("minimize", "maximize")),
    )


def _local_path(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def _storage(r: _Reader, value: Any, base_dir: str, run_dir: str) -> str:
    if value is None:
        return "sqlite:///" + os.path.join(run_dir, "study.db")
    url = r.string(value, "storage")
    if not _URL.match(url):
        if url.lower().endswith(_SQLITE_SUFFIXES):
            return "sqlite:///" + _local_path(base_dir, url)
        r.fail(
            "storage",
            f"must be a database URL (sqlite:///path/to/study.db, postgresql://user@host/db, ...) "
            f"or a path ending in .db, .sqlite or .sqlite3, got {url!r}",
        )
    scheme, rest = url.split("://", 1)
    if scheme.split("+")[0].lower() != "sqlite" or not rest:
        return url
    if not rest.startswith("/"):
        r.fail(
            "storage",
            f"a sqlite URL is sqlite:///relative/path.db or sqlite:////abs/path.db, got {url!r}",
        )
    file, q, query = rest[1:].partition("?")
    if file in ("", ":memory:") or file.startswith("/"):
        return url
    return f"{scheme}:///{_local_path(base_dir, file)}{q}{query}"


def _checkpoints(r: _Reader, value: Any, base_dir: str, run_dir: str) -> CheckpointSettings:
    allowed = ("dir", "every", "every_steps", "keep_best", "compression", "async")
    section = r.mapping(value, "checkpoints", allowed, optional=True)
    directory = os.path.join(run_dir, "checkpoints")
    if "dir" in section:
        directory = r.string(section["dir"], "checkpoints.dir")
        if not _URL.match(directory):
            directory = _local_path(base_dir, directory)
    every: float | None = 1.0
    every_steps: int | None = None
    which = r.exactly_one(section, "checkpoints", "every", "every_steps", required=False)
    if which == "every":
        every = r.real(section["every"], "checkpoints.every", _Bounds(gt=0))
    elif which == "every_steps":
        every = None
        every_steps = r.integer(section["every_steps"], "checkpoints.every_steps", _Bounds(gt=0))
    return CheckpointSettings(
        dir=directory,
        every=every,
        every_steps=every_steps,
        keep_best=r.integer(section.get("keep_best", 3), "checkpoints.keep_best", _Bounds(ge=1)),
        compression=r.choice(
            section.get("compression", "none"), "checkpoints.compression", ("none", "zstd")
        ),
        async_save=r.boolean(section.get("async", True), "checkpoints.async"),
    )


def _warmup(r: _Reader, value: Any) -> WarmupSettings:
    required = {"hparams": "hparams: {lr: 1.0e-3, batch_size: 64}"}
    section = r.mapping(value, "warmup", ("epochs", "steps", "hparams"), required)
    epochs = steps = None
    if r.exactly_one(section, "warmup", "epochs", "steps", required=True) == "epochs":
        epochs = r.real(section["epochs"], "warmup.epochs", _Bounds(gt=0))
    else:
        steps = r.integer(section["steps"], "warmup.steps", _Bounds(gt=0))
    hparams = _hparams(r, section["hparams"], "warmup.hparams")
    return WarmupSettings(epochs=epochs, steps=steps, hparams=hparams)


def _hparams(r: _Reader, value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        r.fail(
            key,
            f"must be a mapping of hyperparameter to value such as "
            f"{{lr: 1.0e-3, batch_size: 64}}, got {_show(value)}",
        )
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            r.fail(key, f"keys must be strings, got {_show(k)}")
        here = f"{key}.{k}"
        v = _number(v)
        if isinstance(v, list):
            v = [_number(x) for x in v]
            if not all(_is_number(x) for x in v):
                r.fail(here, f"a list must hold numbers only, got {_show(v)}")
        elif v is not None and not isinstance(v, str | int | float | bool):
            r.fail(
                here,
                f"must be a number, string, true/false, null or a list of numbers, got {_show(v)}",
            )
        out[k] = v
    for k, example in (("lr", "lr: 1.0e-3"), ("batch_size", "batch_size: 64")):
        if k not in out:
            r.fail(f"{key}.{k}", f"required: the warm-up's {k}; add it, e.g. `{example}`")
    out["batch_size"] = r.integer(out["batch_size"], f"{key}.batch_size", _Bounds(ge=1))
    for k, bounds in _KNOWN.items():
        if k in out:
            out[k] = r.real(out[k], f"{key}.{k}", bounds)
    if "betas" in out:
        betas = out["betas"]
        if not (isinstance(betas, list) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
            r.fail(f"{key}.betas", f"must be a pair [beta1, beta2] in [0, 1), got {_show(betas)}")
    return out


def _trials(r: _Reader, value: Any) -> TrialSettings:
    allowed = (
        "n",
        "epochs",
        "steps",
        "eval_every",
        "eval_every_steps",
        "retries",
        "heartbeat_s",
        "grace_s",
        "max_failures",
    )
    section = r.mapping(value, "trials", allowed, {"n": "n: 20"})
    budget = r.exactly_one(section, "trials", "epochs", "steps", required=True)
    epochs = steps = None
    if budget == "epochs":
        epochs = r.real(section["epochs"], "trials.epochs", _Bounds(gt=0))
    else:
        steps = r.integer(section["steps"], "trials.steps", _Bounds(gt=0))
    every = r.exactly_one(section, "trials", "eval_every", "eval_every_steps", required=False)
    eval_every = eval_every_steps = None
    if every == "eval_every":
        eval_every = r.real(section["eval_every"], "trials.eval_every", _Bounds(gt=0))
        if epochs is not None and eval_every > epochs:
            r.fail(
                "trials.eval_every",
                f"must be <= trials.epochs, or the pruner never hears from a trial, "
                f"got eval_every={_fmt(eval_every)} epochs={_fmt(epochs)}",
            )
    elif every == "eval_every_steps":
        eval_every_steps = r.integer(
            section["eval_every_steps"], "trials.eval_every_steps", _Bounds(gt=0)
        )
        if steps is not None and eval_every_steps > steps:
            r.fail(
                "trials.eval_every_steps",
                f"must be <= trials.steps, or the pruner never hears from a trial, "
                f"got eval_every_steps={eval_every_steps} steps={steps}",
            )
    elif epochs is not None:
        eval_every = 0.25 * epochs
    else:
        assert steps is not None
        eval_every_steps = max(1, steps // 4)
    return TrialSettings(
        n=r.integer(section["n"], "trials.n", _Bounds(ge=1)),
        epochs=epochs,
        steps=steps,
        eval_every=eval_every,
        eval_every_steps=eval_every_steps,
        retries=r.integer(section.get("retries", 2), "trials.retries", _Bounds(ge=0)),
        heartbeat_s=r.real(section.get("heartbeat_s", 30.0), "trials.heartbeat_s", _Bounds(gt=0)),
        grace_s=r.real(section.get("grace_s", 120.0), "trials.grace_s", _Bounds(gt=0)),
        max_failures=r.integer(
            section.get("max_failures", 3), "trials.max_failures", _Bounds(ge=1)
        ),
    )


def _data(r: _Reader, value: Any) -> DataSettings:
    section = r.mapping(value, "data", ("num_workers",), optional=True)
    return DataSettings(
        num_workers=r.integer(section.get("num_workers", 0), "data.num_workers", _Bounds(ge=0))
    )


def _schedule(r: _Reader, value: Any) -> ScheduleSettings | None:
    if value is None:
        return None
    required = {"name": "name: cosine"}
    section = r.mapping(value, "schedule", ("name", "warmup", "final"), required)
    return ScheduleSettings(
        name=r.choice(section["name"], "schedule.name", ("cosine", "linear", "constant")),
        warmup=r.real(section.get("warmup", 0.0), "schedule.warmup", _Bounds(ge=0, lt=1)),
        final=r.real(section.get("final", 0.0), "schedule.final", _Bounds(ge=0, le=1)),
    )


# -- search space ---------------------------------------------------------------------------------

_KINDS = ("float", "int", "categorical")
_ENTRY_FORMS = "{float: [low, high]}, {int: [low, high]} or {categorical: [a, b, ...]}"


def _search_space(r: _Reader, value: Any, hparams: dict[str, Any]) -> dict[str, Param]:
    if not isinstance(value, dict) or not value:
        r.fail(
            "search_space",
            f"must be a non-empty mapping of hyperparameter to range, e.g. "
            f"{{lr: {{float: [1.0e-5, 1.0e-1], log: true}}}}, got {_show(value)}",
        )
    out: dict[str, Param] = {}
    for name, entry in value.items():
        if not isinstance(name, str):
            r.fail("search_space", f"keys must be strings, got {_show(name)}")
        key = f"search_space.{name}"
        param = _param(r, name, entry, key)
        if name not in hparams:
            r.fail(
                key,
                f"{name!r} is not in warmup.hparams; add it to warmup.hparams with the "
                f"value the warm-up should use",
            )
        _check_known(r, param, key)
        out[name] = param
    return out


def _param(r: _Reader, name: str, value: Any, key: str) -> Param:
    if not isinstance(value, dict):
        r.fail(key, f"must be one of {_ENTRY_FORMS}, got {_show(value)}")
    section = r.mapping(value, key, (*_KINDS, "log", "step"))
    kinds = [k for k in _KINDS if k in section]
    if len(kinds) != 1:
        got = f"got {', '.join(kinds)}" if kinds else "got none"
        r.fail(key, f"needs exactly one of float, int, categorical ({got}); write {_ENTRY_FORMS}")
    kind = kinds[0]
    if kind == "categorical":
        for extra in ("log", "step"):
            if extra in section:
                r.fail(
                    f"{key}.{extra}",
                    f"{extra} applies to float and int ranges, not to categorical; remove it",
                )
        return Param(name, "categorical", choices=_choices(r, section["categorical"], key))
    bounds = section[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        r.fail(key, f"{kind} must be a range [low, high], got {_show(bounds)}")
    log = r.boolean(section.get("log", False), f"{key}.log")
    if kind == "float":
        low, high = (_number(b) for b in bounds)
        if not (_is_number(low) and _is_number(high)):
            r.fail(key, f"float range bounds must be numbers, got {_show(bounds)}")
        step = section.get("step")
        if step is not None:
            step = r.real(step, f"{key}.step", _Bounds(gt=0))
        if log and step is not None:
            r.fail(key, "log and step are exclusive: a log range cannot have a step; remove one")
        low, high = float(low), float(high)
    else:
        low, high = bounds
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
            r.fail(
                key,
                f"int range bounds must be integers, got {_show(bounds)}; "
                f"use float: for a real-valued range",
            )
        step = r.integer(section.get("step", 1), f"{key}.step", _Bounds(ge=1))
        if log and step != 1:
            r.fail(
                key,
                f"log and step are exclusive: a log range cannot have a step, got "
                f"step={step}; remove one",
            )
    if not low < high:
        r.fail(
            key,
            f"low must be < high, got low={_fmt(low)} high={_fmt(high)}; write the range "
            f"as [low, high] (a fixed value belongs in warmup.hparams only)",
        )
    if log and low <= 0:
        r.fail(key, f"log: true requires low > 0, got low={_fmt(low)}; raise low or set log: false")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _choices(r: _Reader, value: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(value, list) or not value:
        r.fail(key, f"categorical must be a non-empty list of choices, got {_show(value)}")
    choices: list[Any] = []
    for c in value:
        c = _number(c)
        if c is not None and not isinstance(c, str | int | float | bool):
            r.fail(key, f"choices must be strings, numbers, true/false or null, got {_show(c)}")
        # Optuna finds a choice by ==, so 1, 1.0 and true would be the same choice.
        if any(c == d and (c is None) == (d is None) for d in choices):
            r.fail(key, f"choices must be distinct, got {_show(c)} twice in {_show(value)}")
        choices.append(c)
    return tuple(choices)


def _check_known(r: _Reader, p: Param, key: str) -> None:
    """Sanity rules for the hyperparameters hpsearch applies itself."""
    if p.name == "betas":
        r.fail(
            key,
            "betas is a pair and Optuna samples single values; keep betas fixed in "
            "warmup.hparams, or sample a scalar (e.g. beta2) and apply it in "
            "Task.apply_hparams",
        )
    if p.name == "batch_size":
        if p.kind == "float" or (
            p.kind == "categorical"
            and not all(isinstance(c, int) and not isinstance(c, bool) for c in p.choices or ())
        ):
            r.fail(
                key,
                "batch_size must be an int range or a categorical of integers; write "
                "{int: [low, high]} or {categorical: [32, 64, ...]}",
            )
        smallest: list[tuple[str, Any]] = (
            [("low", p.low)] if p.kind == "int" else [("choice", min(p.choices or (1,)))]
        )
        for label, v in smallest:
            if v < 1:
                r.fail(key, f"batch_size must be >= 1, got {label}={_fmt(v)}")
        return
    bounds = _KNOWN.get(p.name)
    if bounds is None:
        return
    if p.kind == "int":
        r.fail(key, f"{p.name} is real-valued; write {{float: [low, high]}} instead of int")
    values: list[tuple[str, Any]]
    if p.kind == "float":
        values = [("low", p.low), ("high", p.high)]
    else:
        values = [("choice", c) for c in p.choices or ()]
    for label, v in values:
        if not _is_number(v):
            r.fail(key, f"{p.name} choices must be numbers, got {_show(v)}")
        if not bounds.ok(v):
            r.fail(key, f"{p.name} must be {bounds.text()}, got {label}={_fmt(v)}")


# -- sampler and pruner ---------------------------------------------------------------------------


def _classes(module: Any, base: type) -> dict[str, type]:
    """The public concrete classes of an Optuna module."""
    out = {}
    for n in dir(module):
        obj = getattr(module, n)
        if (
            not n.startswith(("_", "Base"))
            and isinstance(obj, type)
            and issubclass(obj, base)
            and not inspect.isabstract(obj)
        ):
            out[n] = obj
    return out


def _component(
    r: _Reader, value: Any, key: str, module: Any, base: type
) -> tuple[ComponentSettings, type]:
    classes = _classes(module, base)
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        r.fail(
            key,
            f"must be a mapping {{name: <class in {module.__name__}>, <argument>: ...}}, "
            f"got {_show(value)}",
        )
    if "name" not in value:
        r.fail(
            f"{key}.name", f"required key is missing; add it, e.g. `name: {next(iter(classes))}`"
        )
    name = value["name"]
    if not isinstance(name, str) or name not in classes:
        hint = _did_you_mean(name, classes) if isinstance(name, str) else ""
        r.fail(
            f"{key}.name",
            f"{_show(name)} is not a class in {module.__name__}{hint} "
            f"(available: {', '.join(classes)})",
        )
    cls = classes[name]
    kwargs = {k: v for k, v in value.items() if k != "name"}
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for k in kwargs:
            if k not in params:
                r.fail(
                    f"{key}.{k}",
                    f"{name} has no argument {k!r}{_did_you_mean(k, params)} "
                    f"(its arguments: {', '.join(params)})",
                )
    return ComponentSettings(name, kwargs), cls


def _build(settings: ComponentSettings, cls: type, extra: dict[str, Any]) -> Any:
    return cls(**copy.deepcopy(settings.kwargs), **extra)


def _validate_build(
    r: _Reader, key: str, comp: ComponentSettings, cls: type, extra: dict[str, Any]
) -> None:
    """Bind and build once at load so that bad arguments fail now, not after the warm-up."""
    try:
        inspect.signature(cls).bind(**comp.kwargs, **extra)
    except TypeError as e:
        r.fail(
            key,
            f"{comp.name}: {e}; give its arguments as keys next to name "
            f"(its arguments: {', '.join(inspect.signature(cls).parameters)})",
        )
    args = ", ".join(f"{k}={_show(v)}" for k, v in comp.kwargs.items())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _build(comp, cls, extra)
    except Exception as e:
        r.fail(
            key, f"{comp.name}({args}) cannot be built: {type(e).__name__}: {e}; fix the argument"
        )


def _grid_space(search_space: Mapping[str, Param]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for name, p in search_space.items():
        if p.kind == "categorical":
            grid[name] = list(p.choices or ())
        elif p.kind == "int":
            assert isinstance(p.low, int) and isinstance(p.high, int) and isinstance(p.step, int)
            grid[name] = list(range(p.low, p.high + 1, p.step))
    return grid


def _sampler(
    r: _Reader, value: Any, search_space: dict[str, Param], seed: int
) -> ComponentSettings:
    if value is None:
        value = {"name": "TPESampler"}
    comp, cls = _component(r, value, "sampler", optuna.samplers, optuna.samplers.BaseSampler)
    if "seed" in comp.kwargs:
        r.fail(
            "sampler.seed",
            f"remove it: the sampler's seed comes from the top-level seed "
            f"(got seed={_show(comp.kwargs['seed'])}); set `seed:` instead",
        )
    extra: dict[str, Any] = {}
    if cls is optuna.samplers.GridSampler:
        if "search_space" in comp.kwargs:
            r.fail(
                "sampler.search_space",
                "remove it: GridSampler's grid is derived from the study's search_space",
            )
        for name, p in search_space.items():
            if p.kind == "float":
                r.fail(
                    "sampler",
                    f"GridSampler needs every search_space entry to be categorical "
                    f"or int, but search_space.{name} is a float range "
                    f"[{_fmt(p.low)}, {_fmt(p.high)}]; write it as "
                    f"{{categorical: [...]}} or choose another sampler",
                )
        extra["search_space"] = _grid_space(search_space)
    if "seed" in inspect.signature(cls).parameters:
        extra["seed"] = seed
    _validate_build(r, "sampler", comp, cls, extra)
    return comp


def _pruner(r: _Reader, value: Any) -> ComponentSettings:
    if value is None:
        value = {"name": "NopPruner"}
    comp, cls = _component(r, value, "pruner", optuna.pruners, optuna.pruners.BasePruner)
    _validate_build(r, "pruner", comp, cls, {})
    return comp


def make_sampler(settings: StudySettings, seed: int) -> optuna.samplers.BaseSampler:
    """Build the study's sampler, seeded with `seed` when it takes one.

    A GridSampler gets its grid from `settings.search_space`.
    """
    cls = getattr(optuna.samplers, settings.sampler.name)
    extra: dict[str, Any] = {}
    if cls is optuna.samplers.GridSampler:
        extra["search_space"] = _grid_space(settings.search_space)
    if "seed" in inspect.signature(cls).parameters:
        extra["seed"] = seed
    sampler: optuna.samplers.BaseSampler = _build(settings.sampler, cls, extra)
    return sampler


def make_pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    """Build the study's pruner (a NopPruner for `pruner: null`)."""
    pruner: optuna.pruners.BasePruner = _build(
        settings.pruner, getattr(optuna.pruners, settings.pruner.name), {}
    )
    return pruner


# -- hyperparameters ------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, settings: StudySettings) -> dict[str, Any]:
    """Ask `trial` for a value of every search_space entry, in file order."""
    out: dict[str, Any] = {}
    for name, p in settings.search_space.items():
        if p.kind == "float":
            assert p.low is not None and p.high is not None
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            assert isinstance(p.low, int) and isinstance(p.high, int) and isinstance(p.step, int)
            out[name] = trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
        else:
            out[name] = trial.suggest_categorical(name, list(p.choices or ()))
    return out


def warmup_hparams(settings: StudySettings) -> dict[str, Any]:
    """A fresh copy of the warm-up's hyperparameters."""
    return copy.deepcopy(settings.warmup.hparams)


def trial_hparams(settings: StudySettings, sampled: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameters: the warm-up's values overridden by the sampled ones."""
    return {**warmup_hparams(settings), **copy.deepcopy(dict(sampled))}


def check_forkable(settings: StudySettings, task_cls: type[Task]) -> None:
    """Raise StudyFileError for a search_space key a fork cannot apply to a restored state.

    The FORKABLE keys always can; any other key only if `task_cls` overrides `Task.apply_hparams`.
    """
    from hpsearch.search.taskload import overrides  # imports torch; only needed here

    if overrides(task_cls, "apply_hparams"):
        return
    for name in settings.search_space:
        if name not in FORKABLE:
            raise StudyFileError(
                settings.path,
                f"search_space.{name}",
                f"{name!r} cannot be forked: it changes the model's shape/data, which the warm-up "
                f"fixes. Remove it from search_space, or implement Task.apply_hparams in "
                f"{task_cls.__name__} to apply it to a restored model.",
            )
