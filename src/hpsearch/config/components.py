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
The YAML is parsed by a `yaml.SafeLoader` that also refuses anchors and aliases, and a message shows
at most a couple of hundred characters of any value. Local storage and checkpoint directories are
checked by creating (and deleting) an empty file; the sampler and pruner are built and run through
two dry trials. What needs the task (its model, optimizer and data set size) is checked by
`check_forkable` and `check_budgets` before the warm-up.

The settings are frozen dataclasses. The mappings they hold (`WarmupSettings.hparams`,
`StudySettings.search_space`, `ComponentSettings.kwargs`) are plain dicts so that the settings
pickle into worker processes; treat them as read-only and use `warmup_hparams` / `trial_hparams`
for copies you may change.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import math
import os
import re
import tempfile
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
    "check_budgets",
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
_SHOWN = 200  # characters of one value a message shows: a value can be megabytes long
_MAX_DEPTH = 50  # YAML nesting levels; a study file needs about five
# Budgets past these are typos (or attacks): 1e308 epochs overflows the sample count.
_MAX_EPOCHS = 1e6
_MAX_STEPS = 10**12
_MAX_GRID = 10**6  # values of one int range a GridSampler enumerates


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


class _Full(Exception):
    """The message has shown enough of a value."""


def _show(value: Any, limit: int = _SHOWN) -> str:
    """A value as the user wrote it in YAML, cut after `limit` characters; a huge value is never
    rendered in full."""
    out: list[str] = []
    left = limit + 1

    def put(text: str) -> None:
        nonlocal left
        out.append(text[:left])
        left -= len(text)
        if left <= 0:
            raise _Full

    def walk(v: Any) -> None:
        if v is None:
            put("null")
        elif isinstance(v, bool):
            put("true" if v else "false")
        elif isinstance(v, dict):
            put("{")
            for i, (k, x) in enumerate(v.items()):
                put(", " if i else "")
                walk(k)
                put(": ")
                walk(x)
            put("}")
        elif isinstance(v, list | tuple):
            put("[")
            for i, x in enumerate(v):
                put(", " if i else "")
                walk(x)
            put("]")
        elif isinstance(v, str):
            put(repr(v[:left]) if len(v) > left else repr(v))
        else:
            put(repr(v))

    try:
        walk(value)
    except _Full:
        return "".join(out)[:limit] + "..."
    return "".join(out)


def _clip(text: str, limit: int = _SHOWN) -> str:
    """Text from elsewhere (an exception, a class's argument list) cut for a message."""
    return text if len(text) <= limit else text[:limit] + "..."


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word[: _SHOWN + 1], list(options), n=1, cutoff=0.6)
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

    def __init__(self, path: str, *, writable: bool = True) -> None:
        self.path = path
        self.writable = writable  # probe that the storage and checkpoint dirs take new files

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
                    _join(key, _clip(k)),
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

    def real(self, value: Any, key: str, bounds: _Bounds = _Bounds(), fix: str = "") -> float:
        value = _number(value)
        fix = f"; {fix}" if fix else ""
        if not _is_number(value) or not math.isfinite(value):
            rule = f" {bounds.text()}" if bounds.text() else ""
            self.fail(key, f"must be a number{rule}, got {_show(value)}{fix}")
        if not bounds.ok(value):
            self.fail(key, f"must be {bounds.text()}, got {_show(value)}{fix}")
        return float(value)

    def integer(self, value: Any, key: str, bounds: _Bounds = _Bounds(), fix: str = "") -> int:
        fix = f"; {fix}" if fix else ""
        if isinstance(value, bool) or not isinstance(value, int):
            rule = f" {bounds.text()}" if bounds.text() else ""
            self.fail(key, f"must be an integer{rule}, got {_show(value)}{fix}")
        if not bounds.ok(value):
            self.fail(key, f"must be an integer {bounds.text()}, got {_show(value)}{fix}")
        return value

    def epochs(self, value: Any, key: str, what: str) -> float:
        """An epoch budget: finite, positive and of a size a run can reach."""
        return self.real(
            value, key, _Bounds(gt=0, le=_MAX_EPOCHS), f"give the epochs {what}, e.g. {key}: 2"
        )

    def steps(self, value: Any, key: str, what: str) -> int:
        """A step budget: a positive integer of a size a run can reach."""
        return self.integer(
            value, key, _Bounds(gt=0, le=_MAX_STEPS), f"give the optimizer steps {what}"
        )

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


class _Refused(yaml.YAMLError):
    """A YAML construct a study file may not use, at a place in the file."""

    def __init__(self, mark: yaml.Mark, reason: str) -> None:
        super().__init__(reason)
        self.mark = mark
        self.reason = reason


class _StudyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` without anchors and aliases, nesting limited to _MAX_DEPTH levels.

    An alias is a reference, expanded wherever its value is walked (a message, a deep copy, a
    comparison): ten nested aliases in a 1 kB file are a billion values, and an anchor that refers
    to itself never ends. Refusing them while composing means nothing is ever expanded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                event.start_mark,
                "YAML anchors and aliases (&x / *x) are not allowed in a study file: "
                "write the value out",
            )
        if self._depth >= _MAX_DEPTH:
            raise _Refused(
                event.start_mark,
                f"nested more than {_MAX_DEPTH} levels deep; a study file needs a few",
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # a date like 2001-13-45, a 5000-digit integer
            raise _Refused(
                node.start_mark, f"cannot read this value: {_clip(str(e))}; write it differently"
            ) from None


def load_study_file(path: str | os.PathLike[str], *, writable: bool = True) -> StudySettings:
    """Read and validate a study file; raise StudyFileError naming the key path and the fix.

    With `writable` (the commands that train), the storage's and the checkpoints' directories
    must take new files (an empty file is created and deleted there); the read-only commands
    (`status`, `plot`, ...) pass False and work on a study in a read-only place.
    """
    shown = os.fspath(path)
    r = _Reader(shown, writable=writable)
    try:
        with open(shown, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        r.fail("", f"file not found (looked for {os.path.abspath(shown)}); check the path")
    except (OSError, UnicodeDecodeError) as e:
        r.fail("", f"cannot read the file: {e}")
    try:
        raw = yaml.load(text, Loader=_StudyLoader)  # a SafeLoader, see _StudyLoader
    except _Refused as e:
        r.fail("", f"line {e.mark.line + 1}, column {e.mark.column + 1}: {e.reason}")
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
    checkpoints = _checkpoints(r, raw.get("checkpoints"), base_dir, run_dir, name)
    warmup = _warmup(r, raw["warmup"])
    trials = _trials(r, raw["trials"])
    data = _data(r, raw.get("data"))
    search_space = _search_space(r, raw["search_space"], warmup.hparams)
    sampler, sampler_obj = _sampler(r, raw.get("sampler"), search_space, seed)
    pruner, pruner_obj = _pruner(r, raw.get("pruner", {"name": "MedianPruner"}))
    settings = StudySettings(
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
        sampler=sampler,
        pruner=pruner,
    )
    _dry_run(r, settings, sampler_obj, pruner_obj)
    return settings


def _name(r: _Reader, value: Any) -> str:
    name = r.string(value, "name")
    if not NAME_PATTERN.match(name):
        fixed = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lstrip("._-")[:100] or "my-study"
        r.fail(
            "name",
            f"must be 1-100 letters, digits, '_', '.' or '-' starting with a letter or digit "
            f"(it becomes a directory name), got {_show(name)}; use e.g. {fixed!r}",
        )
    return name


def _task(r: _Reader, value: Any, base_dir: str) -> str:
    spec = r.string(value, "task")
    module, sep, cls = spec.rpartition(":")
    form = "write it as 'package.module:Class' or 'path/to/file.py:Class'"
    if not sep or not module or not cls.isidentifier():
        r.fail("task", f"must name a module or .py file and a class, got {_show(spec)}; {form}")
    if module.endswith(".py"):
        file = os.path.normpath(os.path.join(base_dir, os.path.expanduser(module)))
        if not os.path.isfile(file):
            r.fail(
                "task",
                f"file not found: {_clip(file)} (a relative path is resolved against the study "
                f"file's directory, {base_dir}); fix the path",
            )
        return f"{file}:{cls}"
    if not all(part.isidentifier() for part in module.split(".")):
        r.fail("task", f"{_show(module)} is neither a module path nor a .py file; {form}")
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
        url = "sqlite:///" + os.path.join(run_dir, "study.db")
        _check_database_file(r, url[len("sqlite:///") :])
        return url
    url = r.string(value, "storage")
    if not _URL.match(url):
        if url.lower().endswith(_SQLITE_SUFFIXES):
            file = _local_path(base_dir, url)
            _check_database_file(r, file)
            return "sqlite:///" + file
        r.fail(
            "storage",
            f"must be a database URL (sqlite:///path/to/study.db, postgresql://user@host/db, ...) "
            f"or a path ending in .db, .sqlite or .sqlite3, got {_show(url)}",
        )
    scheme, rest = url.split("://", 1)
    if scheme.split("+")[0].lower() != "sqlite":
        return url
    if rest in ("", "/") or rest[1:].partition("?")[0] == ":memory:":
        r.fail(
            "storage",
            f"{_show(url)} is an in-memory database: each connection (the study, its checkpoint "
            f"tree, every worker) would see its own empty database; give a file path, e.g. "
            f"sqlite:///runs/study.db (relative to the study file), or leave storage out",
        )
    if not rest.startswith("/"):
        r.fail(
            "storage",
            f"a sqlite URL is sqlite:///relative/path.db or sqlite:////abs/path.db, "
            f"got {_show(url)}",
        )
    file, q, query = rest[1:].partition("?")
    if not file.startswith("/"):
        file = _local_path(base_dir, file)
        url = f"{scheme}:///{file}{q}{query}"
    _check_database_file(r, file)
    return url


def _check_database_file(r: _Reader, file: str) -> None:
    """The sqlite file can be opened or created: sqlite writes the file and, in WAL mode, two
    more beside it, so its directory must take new files."""
    fix = "point storage at a directory you can write, e.g. storage: runs/study.db"
    if os.path.isdir(file):
        r.fail("storage", f"{_show(file)} is a directory, not a database file; {fix}")
    if os.path.exists(file) and not os.access(file, os.R_OK | os.W_OK):
        r.fail("storage", f"the database {_show(file)} cannot be read and written; {fix}")
    problem = _cannot_create_in(os.path.dirname(file)) if r.writable else None
    if problem:
        r.fail("storage", f"cannot create the database {_show(file)}: {problem}; {fix}")


def _cannot_create_in(directory: str) -> str | None:
    """Why no file can be created in `directory` (made on demand if missing), or None.

    The test is an empty file created and deleted in `directory`, or, if it does not exist yet,
    in its nearest existing parent. Creating the missing directories here and removing them again
    would race with another process (a second worker) that is creating them for real."""
    d = directory
    while not os.path.lexists(d):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    if not os.path.isdir(d):
        kind = "a file" if os.path.isfile(d) else "not a directory"
        return f"{_show(d)} is {kind}, so nothing can be created in it"
    try:
        fd, probe = tempfile.mkstemp(prefix=".hpsearch-probe-", dir=d)
    except OSError as e:
        return f"{_show(d)} does not take new files ({e.strerror or type(e).__name__})"
    os.close(fd)
    with contextlib.suppress(OSError):  # an empty dot-file left behind harms nothing
        os.unlink(probe)
    return None


def _checkpoints(
    r: _Reader, value: Any, base_dir: str, run_dir: str, name: str
) -> CheckpointSettings:
    allowed = ("dir", "every", "every_steps", "keep_best", "compression", "async")
    section = r.mapping(value, "checkpoints", allowed, optional=True)
    directory = os.path.join(run_dir, "checkpoints")
    if "dir" in section:
        directory = r.string(section["dir"], "checkpoints.dir")
        if not _URL.match(directory):
            directory = _local_path(base_dir, directory)
    _check_checkpoint_dir(r, directory, name)
    every: float | None = 1.0
    every_steps: int | None = None
    which = r.exactly_one(section, "checkpoints", "every", "every_steps", required=False)
    if which == "every":
        every = r.epochs(section["every"], "checkpoints.every", "between checkpoints")
    elif which == "every_steps":
        every = None
        every_steps = r.steps(
            section["every_steps"], "checkpoints.every_steps", "between checkpoints"
        )
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


def _check_checkpoint_dir(r: _Reader, directory: str, name: str) -> None:
    """Checkpoints can be written there: a known fsspec protocol whose package is installed, or
    a local directory (made on demand) that takes new files. Checked now, not at the first save
    after the warm-up."""
    key = "checkpoints.dir"
    if _URL.match(directory):
        protocol, rest = directory.split("://", 1)
        if protocol.lower() not in ("file", "local"):
            _check_protocol(r, protocol, directory)
            return
        directory = rest
    fix = "name a directory you can write (it is created if missing)"
    if os.path.exists(directory) and not os.path.isdir(directory):
        r.fail(key, f"{_show(directory)} is a file, not a directory; {fix}")
    problem = _cannot_create_in(directory) if r.writable else None
    if problem:
        r.fail(key, f"cannot write checkpoints under {_show(directory)}: {problem}; {fix}")
    # The study's own folder is the store's root: only looked at, never written here, because
    # the store decides whether an existing root is its own.
    root = os.path.join(directory, name)
    if os.path.lexists(root) and not os.path.isdir(root):
        r.fail(key, f"{_show(root)} (the study's folder in it) is a file, not a directory; {fix}")
    if r.writable and os.path.isdir(root) and not os.access(root, os.W_OK | os.X_OK):
        r.fail(key, f"the study's folder {_show(root)} cannot be written; {fix}")


def _check_protocol(r: _Reader, protocol: str, url: str) -> None:
    import fsspec  # only for URLs
    from fsspec.registry import known_implementations

    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        known = fsspec.available_protocols()
        r.fail(
            "checkpoints.dir",
            f"{_show(url)}: fsspec knows no protocol {_show(protocol)}"
            f"{_did_you_mean(protocol, known)}; use a local directory or a URL such as "
            f"s3://bucket/prefix, gs://bucket/prefix, file:///path",
        )
    except ImportError as e:
        impl = known_implementations.get(protocol, {})
        package = str(impl.get("class", "")).split(".")[0]
        install = f"pip install {package}" if package else _clip(str(e))
        r.fail(
            "checkpoints.dir",
            f"{_show(url)}: the {protocol}:// protocol needs the package {package or '?'}, "
            f"which is not installed ({_clip(str(e))}); install it ({install}) or use a local "
            f"directory",
        )


def _warmup(r: _Reader, value: Any) -> WarmupSettings:
    required = {"hparams": "hparams: {lr: 1.0e-3, batch_size: 64}"}
    section = r.mapping(value, "warmup", ("epochs", "steps", "hparams"), required)
    epochs = steps = None
    if r.exactly_one(section, "warmup", "epochs", "steps", required=True) == "epochs":
        epochs = r.epochs(section["epochs"], "warmup.epochs", "the warm-up trains")
    else:
        steps = r.steps(section["steps"], "warmup.steps", "the warm-up trains")
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
        here = f"{key}.{_clip(k)}"
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
        epochs = r.epochs(section["epochs"], "trials.epochs", "each trial trains after its fork")
    else:
        steps = r.steps(section["steps"], "trials.steps", "each trial trains after its fork")
    every = r.exactly_one(section, "trials", "eval_every", "eval_every_steps", required=False)
    eval_every = eval_every_steps = None
    if every == "eval_every":
        eval_every = r.epochs(section["eval_every"], "trials.eval_every", "between evaluations")
        if epochs is not None and eval_every > epochs:
            r.fail(
                "trials.eval_every",
                f"must be <= trials.epochs, or the pruner never hears from a trial, "
                f"got eval_every={_fmt(eval_every)} epochs={_fmt(epochs)}",
            )
    elif every == "eval_every_steps":
        eval_every_steps = r.steps(
            section["eval_every_steps"], "trials.eval_every_steps", "between evaluations"
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
        key = f"search_space.{_clip(name)}"
        param = _param(r, name, entry, key)
        if name not in hparams:
            r.fail(
                key,
                f"{_show(name)} is not in warmup.hparams; add it to warmup.hparams with the "
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
                    f"{key}.{_clip(str(k))}",
                    f"{name} has no argument {_show(k)}{_did_you_mean(str(k), params)} "
                    f"(its arguments: {_clip(', '.join(params))})",
                )
    for k, v in kwargs.items():
        if k in params:
            kwargs[k] = _check_argument(r, f"{key}.{k}", name, params[k], v)
    return ComponentSettings(name, kwargs), cls


# What a YAML value can be for an annotation's alternative; None: cannot tell (accept it).
_FITS: dict[str, Any] = {
    "Any": lambda v: True,
    "object": lambda v: True,
    "None": lambda v: v is None,
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _is_number,
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, list),
    "Sequence": lambda v: isinstance(v, list),
    "tuple": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "Mapping": lambda v: isinstance(v, dict),
}


def _alternatives(annotation: str) -> list[str]:
    """`int | None`, `Optional[int]` and `Union[int, str]` as their alternatives."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(annotation):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "|" and depth == 0:
            parts.append(annotation[start:i])
            start = i + 1
    parts.append(annotation[start:])
    out: list[str] = []
    for part in (p.strip().removeprefix("typing.") for p in parts):
        if part.startswith("Optional[") and part.endswith("]"):
            out += [*_alternatives(part[len("Optional[") : -1]), "None"]
        elif part.startswith("Union[") and part.endswith("]"):
            out += _alternatives(part[len("Union[") : -1].replace(",", "|"))
        else:
            out.append(part)
    return out


def _fits(alternative: str, value: Any) -> bool | None:
    base = alternative.split("[", 1)[0].strip()
    if base in _FITS:
        return bool(_FITS[base](value))
    if base == "Callable" or base.startswith("Base") or base == "FrozenTrial":
        return False  # a function or an Optuna object: no YAML value is one
    return None


def _check_argument(
    r: _Reader, key: str, cls_name: str, param: inspect.Parameter, value: Any
) -> Any:
    """The value, if it can be of the type the argument is annotated with: a value of the wrong
    type is often stored by the constructor and only fails at the first trial after the
    warm-up."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return value
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    text = text or str(annotation)
    alternatives = _alternatives(text)
    if "float" in alternatives and "str" not in alternatives:
        value = _number(value)
    if any(_fits(a, value) is not False for a in alternatives):
        return value
    if not any(a.split("[", 1)[0].strip() in _FITS for a in alternatives if a != "None"):
        r.fail(
            key,
            f"{cls_name}'s {param.name} takes a Python object ({_clip(text)}), which a study "
            f"file cannot give, got {_show(value)}; remove {param.name}",
        )
    default = param.default
    example = (
        f", e.g. its default {param.name}: {_show(default)}"
        if default is not inspect.Parameter.empty and default is not None
        else ""
    )
    r.fail(
        key,
        f"{cls_name}'s {param.name} takes {_clip(text)}, got {_show(value)}; give a value of "
        f"that type{example}",
    )


def _build(settings: ComponentSettings, cls: type, extra: dict[str, Any]) -> Any:
    return cls(**copy.deepcopy(settings.kwargs), **extra)


def _validate_build(
    r: _Reader, key: str, comp: ComponentSettings, cls: type, extra: dict[str, Any]
) -> Any:
    """Bind and build once at load so that bad arguments fail now, not after the warm-up."""
    try:
        inspect.signature(cls).bind(**comp.kwargs, **extra)
    except TypeError as e:
        r.fail(
            key,
            f"{comp.name}: {_clip(str(e))}; give its arguments as keys next to name "
            f"(its arguments: {_clip(', '.join(inspect.signature(cls).parameters))})",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _build(comp, cls, extra)
    except Exception as e:
        r.fail(
            key,
            f"{_call(comp)} cannot be built: {type(e).__name__}: {_clip(str(e))}; fix the argument",
        )


def _call(comp: ComponentSettings) -> str:
    args = ", ".join(f"{k}={_show(v, 60)}" for k, v in comp.kwargs.items())
    return f"{comp.name}({_clip(args)})"


def _grid_space(search_space: Mapping[str, Param]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for name, p in search_space.items():
        if p.kind == "categorical":
            grid[name] = list(p.choices or ())
        elif p.kind == "int":
            assert isinstance(p.low, int) and isinstance(p.high, int) and isinstance(p.step, int)
            grid[name] = list(range(p.low, p.high + 1, p.step))
    return grid


def _sampler_extra(cls: type, search_space: Mapping[str, Param], seed: int) -> dict[str, Any]:
    """The arguments hpsearch gives the sampler: the seed, and a GridSampler's grid."""
    extra: dict[str, Any] = {}
    if cls is optuna.samplers.GridSampler:
        extra["search_space"] = _grid_space(search_space)
    if "seed" in inspect.signature(cls).parameters:
        extra["seed"] = seed
    return extra


def _sampler(
    r: _Reader, value: Any, search_space: dict[str, Param], seed: int
) -> tuple[ComponentSettings, optuna.samplers.BaseSampler]:
    if value is None:
        value = {"name": "TPESampler"}
    comp, cls = _component(r, value, "sampler", optuna.samplers, optuna.samplers.BaseSampler)
    if "seed" in comp.kwargs:
        r.fail(
            "sampler.seed",
            f"remove it: the sampler's seed comes from the top-level seed "
            f"(got seed={_show(comp.kwargs['seed'])}); set `seed:` instead",
        )
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
            if p.kind == "int":
                assert isinstance(p.low, int) and isinstance(p.high, int)
                count = (p.high - p.low) // int(p.step or 1) + 1
                if count > _MAX_GRID:
                    r.fail(
                        f"search_space.{name}",
                        f"GridSampler would list {count} values of this range (at most "
                        f"{_MAX_GRID}); narrow it, raise its step, or choose another sampler",
                    )
    sampler = _validate_build(r, "sampler", comp, cls, _sampler_extra(cls, search_space, seed))
    return comp, sampler


def _pruner(r: _Reader, value: Any) -> tuple[ComponentSettings, optuna.pruners.BasePruner]:
    if value is None:
        value = {"name": "NopPruner"}
    comp, cls = _component(r, value, "pruner", optuna.pruners, optuna.pruners.BasePruner)
    return comp, _validate_build(r, "pruner", comp, cls, {})


def _dry_run(
    r: _Reader,
    settings: StudySettings,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> None:
    """Two trials of an in-memory study through the sampler and the pruner built from the file.

    Samplers and pruners store most arguments unchecked; one of the wrong kind (a string where
    a number belongs, a value out of its range) fails at the first trial that uses it, which
    would be after the warm-up. The trials' values are made up, so only errors are looked at."""
    verbosity = optuna.logging.get_verbosity()
    # Its lines ("Trial 0 finished", "sampled independently") are about made-up trials.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stage = ["sampler"]

    def objective(trial: optuna.Trial) -> float:
        stage[0] = "sampler"
        _suggest(trial, settings.search_space)
        stage[0] = "pruner"
        for step in range(2):
            trial.report(float(trial.number + step), step)
            trial.should_prune()
        stage[0] = "sampler"  # tell() and the sampler's after_trial
        return float(trial.number)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(
                sampler=sampler, pruner=pruner, direction=settings.objective.direction
            )
            # optimize(), not ask/tell: a GridSampler stops the study once its grid is covered.
            study.optimize(objective, n_trials=2)
    except Exception as e:
        key = stage[0]
        comp = settings.sampler if key == "sampler" else settings.pruner
        fix = "fix its arguments"
        if isinstance(e, ModuleNotFoundError) and e.name:
            fix = f"install the package it needs (pip install {e.name.split('.')[0]})"
        r.fail(
            key, f"{_call(comp)} fails on a first trial: {type(e).__name__}: {_clip(str(e))}; {fix}"
        )
    finally:
        optuna.logging.set_verbosity(verbosity)


def make_sampler(settings: StudySettings, seed: int) -> optuna.samplers.BaseSampler:
    """Build the study's sampler, seeded with `seed` when it takes one.

    A GridSampler gets its grid from `settings.search_space`.
    """
    cls = getattr(optuna.samplers, settings.sampler.name)
    extra = _sampler_extra(cls, settings.search_space, seed)
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
    return _suggest(trial, settings.search_space)


def _suggest(trial: optuna.Trial, search_space: Mapping[str, Param]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, p in search_space.items():
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

    The FORKABLE keys can if the task's model and optimizer hold them: a param-group key
    (`momentum`, `eps`, ...) must be in every param group, `dropout` needs a `torch.nn.Dropout*`
    module; both are checked on a model and optimizer built once with the warm-up's hparams (on
    the meta device, so no memory is spent on weights). Any other key is forkable only if
    `task_cls` overrides `Task.apply_hparams`.
    """
    from hpsearch.config.taskload import overrides  # imports torch; only needed here

    if not overrides(task_cls, "apply_hparams"):
        for name in settings.search_space:
            if name not in FORKABLE:
                raise StudyFileError(
                    settings.path,
                    f"search_space.{_clip(name)}",
                    f"{_show(name)} cannot be forked: it changes the model's shape/data, which the "
                    f"warm-up fixes. Remove it from search_space, or implement "
                    f"Task.apply_hparams in {task_cls.__name__} to apply it to a restored model.",
                )
    _check_fork_targets(settings, task_cls)


def _check_fork_targets(settings: StudySettings, task_cls: type[Task]) -> None:
    # What the fork applies itself (hpsearch.training.fork): the same keys, the same test.
    from hpsearch.training.fork import _DROPOUTS, GROUP_KEYS

    searched = [n for n in settings.search_space if n in GROUP_KEYS or n == "dropout"]
    if not searched:
        return
    model, optimizer = _build_for_check(settings, task_cls)
    for name in searched:
        key = f"search_space.{name}"
        if name == "dropout":
            if not any(isinstance(m, _DROPOUTS) for m in model.modules()):
                raise StudyFileError(
                    settings.path,
                    key,
                    f"the model that {task_cls.__name__}.model builds ({type(model).__name__}) "
                    f"has no torch.nn.Dropout module, so a fork has no dropout to change; add "
                    f"torch.nn.Dropout(hparams['dropout']) to the model, or remove dropout from "
                    f"search_space",
                )
            continue
        groups = getattr(optimizer, "param_groups", None) or []
        lacking = [g for g in groups if name not in g]
        if lacking:
            has = ", ".join(k for k in lacking[0] if k != "params")
            raise StudyFileError(
                settings.path,
                key,
                f"the task's optimizer {type(optimizer).__name__} has no {name!r} (its param "
                f"groups have {has}), so a fork cannot set it; remove {name} from search_space, "
                f"or have {task_cls.__name__}.optimizer return one that has it"
                + (" (e.g. torch.optim.SGD)" if name == "momentum" else ""),
            )


def _build_for_check(settings: StudySettings, task_cls: type[Task]) -> tuple[Any, Any]:
    """The task's model and optimizer for the warm-up's hparams, on the meta device if the task
    allows it (else on the CPU). The global RNGs are left as they were."""
    import torch

    from hpsearch.errors import HpsearchError, TaskError
    from hpsearch.training.state import rng_state, set_rng_state

    saved = rng_state()
    try:
        task = task_cls()
        hparams = warmup_hparams(settings)
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = task.model(hparams)
                return model, task.optimizer(model, hparams)
        except Exception:  # it loads weights, calls .item(), ...: build it for real, once
            hparams = warmup_hparams(settings)
            model = task.model(hparams)
            return model, task.optimizer(model, hparams)
    except (HpsearchError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise TaskError(
            f"{settings.path}: task: building the model and optimizer of {settings.task} with "
            f"warmup.hparams failed: {type(exc).__name__}: {_clip(str(exc))}; fix the task or "
            f"warmup.hparams"
        ) from exc
    finally:
        set_rng_state(saved)


def check_budgets(settings: StudySettings, samples_per_epoch: int) -> None:
    """Raise StudyFileError for an epoch budget that is 0 of the task's training samples.

    Budgets in epochs become samples as round(epochs * samples_per_epoch) (see
    `hpsearch.search.plan.Plan.of`); a 0 would train nothing, or evaluate or checkpoint after
    every step. `trials.eval_every` defaults to a quarter of `trials.epochs`.
    """
    n = samples_per_epoch
    for key, epochs in (
        ("warmup.epochs", settings.warmup.epochs),
        ("trials.epochs", settings.trials.epochs),
        ("trials.eval_every", settings.trials.eval_every),
        ("checkpoints.every", settings.checkpoints.every),
    ):
        if epochs is not None and round(epochs * n) < 1:
            raise StudyFileError(
                settings.path,
                key,
                f"{_fmt(epochs)} epochs of the task's {n} training samples is 0 samples; the "
                f"minimum is {1 / max(n, 1):.3g} (1 sample); raise it",
            )
