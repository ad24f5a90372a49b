"""One reader per section of a study file that needs no file system and no Optuna: name, task,
device, objective, warm-up (and its hparams), trials, data and schedule. Each takes the raw YAML
value and returns its settings, or raises `StudyFileError` naming the key and the fix."""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

from hpsearch.config.schema import (
    DIRECTIONS,
    SCHEDULE_NAMES,
    WANDB_MODES,
    DataSettings,
    LoggerSettings,
    Objective,
    ScheduleSettings,
    TrialSettings,
    WandbSettings,
    WarmupSettings,
)
from hpsearch.config.values import (
    KNOWN_BOUNDS,
    Bounds,
    Reader,
    as_number,
    clip,
    fmt,
    is_number,
    show,
)

UNBOUNDED = 10**9  # trials.n of a study that only a budget ends
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_CUDA = re.compile(r"^cuda:\d+$")


def read_name(r: Reader, value: Any) -> str:
    name = r.string(value, "name")
    if not NAME_PATTERN.match(name):
        fixed = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lstrip("._-")[:100] or "my-study"
        r.fail(
            "name",
            f"must be 1-100 letters, digits, '_', '.' or '-' starting with a letter or digit "
            f"(it becomes a directory name), got {show(name)}; use e.g. {fixed!r}",
        )
    return name


def read_task(r: Reader, value: Any, base_dir: str) -> str:
    spec = r.string(value, "task")
    module, sep, cls = spec.rpartition(":")
    form = "write it as 'package.module:Class' or 'path/to/file.py:Class'"
    if not sep or not module or not cls.isidentifier():
        r.fail("task", f"must name a module or .py file and a class, got {show(spec)}; {form}")
    if module.endswith(".py"):
        file = os.path.normpath(os.path.join(base_dir, os.path.expanduser(module)))
        if not os.path.isfile(file):
            r.fail(
                "task",
                f"file not found: {clip(file)} (a relative path is resolved against the study "
                f"file's directory, {base_dir}); fix the path",
            )
        return f"{file}:{cls}"
    if not all(part.isidentifier() for part in module.split(".")):
        r.fail("task", f"{show(module)} is neither a module path nor a .py file; {form}")
    return spec


def read_device(r: Reader, value: Any) -> str:
    if not isinstance(value, str) or not (value in ("cpu", "cuda") or _CUDA.match(value)):
        r.fail("device", f"must be cpu, cuda or cuda:N (N a GPU index), got {show(value)}")
    return value


def read_objective(r: Reader, value: Any) -> Objective:
    required = {"metric": "metric: val_accuracy", "direction": "direction: maximize"}
    section = r.mapping(value, "objective", required, required)
    return Objective(
        metric=r.string(section["metric"], "objective.metric"),
        direction=r.choice(section["direction"], "objective.direction", DIRECTIONS),
    )


def read_warmup(r: Reader, value: Any) -> WarmupSettings:
    required = {"hparams": "hparams: {lr: 1.0e-3, batch_size: 64}"}
    section = r.mapping(value, "warmup", ("epochs", "steps", "hparams"), required)
    epochs = steps = None
    if r.exactly_one(section, "warmup", "epochs", "steps", required=True) == "epochs":
        epochs = r.epochs(section["epochs"], "warmup.epochs", "the warm-up trains")
    else:
        steps = r.steps(section["steps"], "warmup.steps", "the warm-up trains")
    hparams = _hparams(r, section["hparams"], "warmup.hparams")
    return WarmupSettings(epochs=epochs, steps=steps, hparams=hparams)


def _hparams(r: Reader, value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        r.fail(
            key,
            f"must be a mapping of hyperparameter to value such as "
            f"{{lr: 1.0e-3, batch_size: 64}}, got {show(value)}",
        )
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            r.fail(key, f"keys must be strings, got {show(k)}")
        here = f"{key}.{clip(k)}"
        v = as_number(v)
        if isinstance(v, list):
            v = [as_number(x) for x in v]
            if not all(is_number(x) for x in v):
                r.fail(here, f"a list must hold numbers only, got {show(v)}")
        elif v is not None and not isinstance(v, str | int | float | bool):
            r.fail(
                here,
                f"must be a number, string, true/false, null or a list of numbers, got {show(v)}",
            )
        out[k] = v
    for k, example in (("lr", "lr: 1.0e-3"), ("batch_size", "batch_size: 64")):
        if k not in out:
            r.fail(f"{key}.{k}", f"required: the warm-up's {k}; add it, e.g. `{example}`")
    out["batch_size"] = r.integer(out["batch_size"], f"{key}.batch_size", Bounds(ge=1))
    for k, bounds in KNOWN_BOUNDS.items():
        if k in out:
            out[k] = r.real(out[k], f"{key}.{k}", bounds)
    if "betas" in out:
        betas = out["betas"]
        if not (isinstance(betas, list) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
            r.fail(f"{key}.betas", f"must be a pair [beta1, beta2] in [0, 1), got {show(betas)}")
    return out


def read_trials(
    r: Reader, value: Any, *, tree: bool = False, budget: float | None = None
) -> TrialSettings:
    """`trials:`; in a fork tree the budget is a leaf's whole training from scratch and the
    tree's shape, not `n`, sets how many trials there are. `budget` (full runs; `--budget`)
    replaces the file's `trials.budget`; a study with a budget needs no `n`."""
    allowed = (
        "n",
        "budget",
        "epochs",
        "steps",
        "eval_every",
        "eval_every_steps",
        "retries",
        "heartbeat_s",
        "grace_s",
        "max_failures",
        "processes",
        "rank_timeout_s",
    )
    section = r.mapping(value, "trials", allowed, None)
    if budget is not None:
        section = {**section, "budget": budget}
    if tree:
        _tree_trials(r, section)
    elif "n" not in section and "budget" not in section:
        r.fail(
            "trials.n",
            "required: how many trials to run (`n: 20`), or how much to spend, in full runs "
            "from scratch (`budget: 16`); add one",
        )
    length = r.exactly_one(section, "trials", "epochs", "steps", required=True)
    epochs = steps = None
    what = "a leaf trains from scratch" if tree else "each trial trains after its fork"
    if length == "epochs":
        epochs = r.epochs(section["epochs"], "trials.epochs", what)
    else:
        steps = r.steps(section["steps"], "trials.steps", what)
    eval_every, eval_every_steps = _evaluations(r, section, epochs, steps)
    return TrialSettings(
        n=r.integer(section.get("n", UNBOUNDED), "trials.n", Bounds(ge=1)),
        epochs=epochs,
        steps=steps,
        eval_every=eval_every,
        eval_every_steps=eval_every_steps,
        retries=r.integer(section.get("retries", 2), "trials.retries", Bounds(ge=0)),
        heartbeat_s=r.real(section.get("heartbeat_s", 30.0), "trials.heartbeat_s", Bounds(gt=0)),
        grace_s=r.real(section.get("grace_s", 120.0), "trials.grace_s", Bounds(gt=0)),
        max_failures=r.integer(section.get("max_failures", 3), "trials.max_failures", Bounds(ge=1)),
        budget=(
            r.real(section["budget"], "trials.budget", Bounds(gt=0, le=1e6))
            if "budget" in section
            else None
        ),
        processes=r.integer(section.get("processes", 1), "trials.processes", Bounds(ge=1, le=1024)),
        rank_timeout_s=r.real(
            section.get("rank_timeout_s", 300.0), "trials.rank_timeout_s", Bounds(gt=0)
        ),
    )


def _tree_trials(r: Reader, section: dict[str, Any]) -> None:
    if "n" in section:
        r.fail(
            "trials.n",
            "a fork tree's size follows from tree.roots, tree.keep and tree.children, not "
            "trials.n; remove trials.n (or give a warmup: section to fork every trial from one "
            "warm-up)",
        )
    if "steps" in section:
        r.fail(
            "trials.steps",
            "a fork tree's rungs are fractions of a budget in samples, which a fork that changes "
            "the batch size keeps: give trials.epochs instead",
        )


def _evaluations(
    r: Reader, section: dict[str, Any], epochs: float | None, steps: int | None
) -> tuple[float | None, int | None]:
    """`trials.eval_every` or `eval_every_steps`: at most the trial's budget, by default four
    evaluations of it."""
    every = r.exactly_one(section, "trials", "eval_every", "eval_every_steps", required=False)
    eval_every = eval_every_steps = None
    if every == "eval_every":
        eval_every = r.epochs(section["eval_every"], "trials.eval_every", "between evaluations")
        if epochs is not None and eval_every > epochs:
            r.fail(
                "trials.eval_every",
                f"must be <= trials.epochs, or the pruner never hears from a trial, "
                f"got eval_every={fmt(eval_every)} epochs={fmt(epochs)}",
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
    return eval_every, eval_every_steps


def read_data(r: Reader, value: Any) -> DataSettings:
    section = r.mapping(value, "data", ("num_workers",), optional=True)
    return DataSettings(
        num_workers=r.integer(section.get("num_workers", 0), "data.num_workers", Bounds(ge=0))
    )


def read_schedule(r: Reader, value: Any) -> ScheduleSettings | None:
    if value is None:
        return None
    required = {"name": "name: cosine"}
    section = r.mapping(value, "schedule", ("name", "warmup", "final", "decay"), required)
    name = r.choice(section["name"], "schedule.name", SCHEDULE_NAMES)
    warmup = r.real(section.get("warmup", 0.0), "schedule.warmup", Bounds(ge=0, lt=1))
    decay = 0.0
    if name == "wsd":
        decay = r.real(section.get("decay", 0.2), "schedule.decay", Bounds(gt=0, le=1))
        if warmup + decay > 1:
            r.fail(
                "schedule",
                f"warmup + decay must be at most 1 (the run's warm-up, then its constant "
                f"phase, then its decay), got warmup={fmt(warmup)} decay={fmt(decay)}",
            )
    elif "decay" in section:
        r.fail(
            "schedule.decay",
            f"only the wsd schedule (warm-up, stable, decay) has a decay; {name} decays "
            "over the whole run: remove decay, or use name: wsd",
        )
    return ScheduleSettings(
        name=name,
        warmup=warmup,
        final=r.real(section.get("final", 0.0), "schedule.final", Bounds(ge=0, le=1)),
        decay=decay,
    )


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def read_loggers(r: Reader, value: Any, base_dir: str, run_dir: str) -> LoggerSettings:
    """`loggers: {tensorboard: DIR, mlflow: TRACKING_URI, wandb: {project: ...}}`, each
    optional; relative paths are resolved against the study file's directory, as every path in
    the file is."""
    section = r.mapping(value, "loggers", ("tensorboard", "mlflow", "wandb"), optional=True)
    tensorboard = mlflow = wandb = None
    tb = section.get("tensorboard")
    if tb is not None and tb is not False:
        key = "loggers.tensorboard"
        if tb is True:
            tensorboard = os.path.join(run_dir, "tensorboard")
        else:
            path = r.string(tb, key)
            if _URI.match(path) and not os.path.isabs(path):
                r.fail(key, f"must be a local directory (or true), got {show(path)}")
            tensorboard = _local(base_dir, path)
        _needs(r, key, "tensorboard")
    if section.get("mlflow") is not None:
        mlflow = _tracking_uri(r, section["mlflow"], base_dir)
        _needs(r, "loggers.mlflow", "mlflow")
    if section.get("wandb") is not None:
        wandb = _wandb(r, section["wandb"], base_dir, run_dir)
        _needs(r, "loggers.wandb", "wandb")
    return LoggerSettings(tensorboard=tensorboard, mlflow=mlflow, wandb=wandb)


def _wandb(r: Reader, value: Any, base_dir: str, run_dir: str) -> WandbSettings:
    """`wandb: {project: NAME, entity: TEAM, mode: online | offline | disabled, dir: DIR}`;
    W&B's files go under `dir` (default: the study's run directory), not the working one."""
    key = "loggers.wandb"
    section = r.mapping(
        value, key, ("project", "entity", "mode", "dir"), {"project": "project: my-project"}
    )
    entity = section.get("entity")
    mode = section.get("mode")
    where = section.get("dir")
    return WandbSettings(
        project=r.string(section["project"], f"{key}.project"),
        entity=None if entity is None else r.string(entity, f"{key}.entity"),
        mode=None if mode is None else r.choice(mode, f"{key}.mode", WANDB_MODES),
        dir=run_dir if where is None else _local(base_dir, r.string(where, f"{key}.dir")),
    )


def _tracking_uri(r: Reader, value: Any, base_dir: str) -> str:
    """An MLflow tracking URI with a relative file or sqlite path made absolute: MLflow would
    resolve it against the working directory, which differs between a run and its workers."""
    uri = r.string(value, "loggers.mlflow")
    if uri.startswith("file:"):
        path = uri[len("file:") :]
        path = path[2:] if path.startswith("//") else path  # file:///abs and file:rel
        return "file://" + _local(base_dir, path)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + _local(base_dir, uri[len("sqlite:///") :])
    if not _URI.match(uri):  # a plain path: MLflow's own reading of it is a file store
        return "file://" + _local(base_dir, uri)
    return uri


def _local(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def _needs(r: Reader, key: str, package: str) -> None:
    """The logger's library is installed (checked only by the commands that train: `status` or
    `export` of the study works without it)."""
    if r.writable and importlib.util.find_spec(package) is None:
        r.fail(
            key,
            f"logging to {package} needs the {package} package, which is not installed; install "
            f"it with pip install 'hpsearch[{package}]', or remove the line",
        )


def read_gpus(r: Reader, value: Any, device: str) -> tuple[int, ...] | None:
    """`gpus: [0, 1, 3]`: the GPUs `--workers N` places its workers on, worker i on the i-th
    (indices as this process sees them, so within an inherited CUDA_VISIBLE_DEVICES; a GPU
    listed twice takes two workers)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    index = all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in items)
    if not items or not index:
        r.fail(
            "gpus",
            f"must be a list of GPU indices (integers >= 0) such as [0, 1, 3], got {show(value)}",
        )
    if device != "cuda":
        r.fail(
            "gpus",
            f"places each worker on a GPU, which needs device: cuda, got device: {device}; "
            "set device: cuda, or remove gpus",
        )
    return tuple(items)
