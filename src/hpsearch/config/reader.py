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
`training.forkcheck.check_forkable` and `check_budgets` before the warm-up.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import optuna
import yaml

from hpsearch.config.budget import DEFAULT_BUDGET, tree_cost
from hpsearch.config.components import dry_run, read_pruner, read_sampler
from hpsearch.config.hatches import read_training
from hpsearch.config.places import read_checkpoints, read_storage
from hpsearch.config.schema import Strategy, StudySettings, WarmupSettings
from hpsearch.config.sections import (
    read_data,
    read_device,
    read_gpus,
    read_loggers,
    read_name,
    read_objective,
    read_schedule,
    read_task,
    read_trials,
    read_warmup,
)
from hpsearch.config.space import read_search_space
from hpsearch.config.tree import generation_sizes, read_tree, start_point
from hpsearch.config.values import Bounds, Reader, clip

__all__ = ["load_study_file", "load_study_mapping"]

_MAX_DEPTH = 50  # YAML nesting levels; a study file needs about five

_TOP = {
    "name": "name: digits-mlp",
    "task": "task: path/to/file.py:MyTask",
    "seed": None,
    "device": None,
    "objective": "objective: {metric: val_accuracy, direction: maximize}",
    "storage": None,
    "checkpoints": None,
    "tree": None,
    "warmup": None,
    "trials": "trials: {n: 20, epochs: 2}",
    "data": None,
    "search_space": "search_space: {lr: {float: [1.0e-5, 1.0e-1], log: true}}",
    "schedule": None,
    "sampler": None,
    "pruner": None,
    "training": None,
    "loggers": None,
    "gpus": None,
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
                node.start_mark, f"cannot read this value: {clip(str(e))}; write it differently"
            ) from None


def load_study_file(
    path: str | os.PathLike[str],
    *,
    writable: bool = True,
    budget: float | None = None,
    processes: int | None = None,
) -> StudySettings:
    """Read and validate a study file; raise StudyFileError naming the key path and the fix.

    With `writable` (the commands that train), the storage's and the checkpoints' directories
    must take new files (an empty file is created and deleted there); the read-only commands
    (`status`, `plot`, ...) pass False and work on a study in a read-only place. `budget`
    (full runs, `hpsearch run --budget`) replaces the file's `trials.budget`, and a tree
    without `tree.roots` is sized from it. `processes` (`--nproc-per-trial`) replaces the
    file's `trials.processes`.
    """
    shown = os.fspath(path)
    r = Reader(shown, writable=writable)
    base_dir = os.path.dirname(os.path.abspath(shown))
    parsed = _parse(r, shown)
    trials = parsed.get("trials") if isinstance(parsed, dict) else None
    if processes is not None and isinstance(trials, dict):
        parsed["trials"] = {**trials, "processes": processes}  # checked as the file's are
    return _read_study(r, parsed, shown, base_dir, budget)


def load_study_mapping(
    config: Mapping[str, Any], *, base_dir: str, source: str = "config", writable: bool = True
) -> StudySettings:
    """Validate a study given as a mapping (what `hpsearch.run(config=...)` takes): the very
    checks and messages of `load_study_file`, with `source` where a message names the file and
    relative paths resolved against `base_dir`. Tuples read as lists, as YAML would give them."""
    r = Reader(source, writable=writable)
    return _read_study(r, _plain(config), source, os.path.abspath(base_dir))


def _plain(value: Any) -> Any:
    """A Python value as YAML would have parsed it: mappings as dicts, tuples as lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _read_study(
    r: Reader, parsed: Any, shown: str, base_dir: str, budget: float | None = None
) -> StudySettings:
    required = {k: v for k, v in _TOP.items() if v is not None}
    raw = r.mapping(parsed, "", _TOP, required)
    settings, sampler, pruner = _read_sections(r, raw, shown, base_dir, budget)
    dry_run(r, settings, sampler, pruner)
    return settings


def _parse(r: Reader, shown: str) -> Any:
    """The file's YAML, read by `_StudyLoader`; not None."""
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
            "the file is empty; a study needs name, task, objective, trials and search_space",
        )
    return raw


def _read_sections(
    r: Reader, raw: dict[str, Any], shown: str, base_dir: str, budget: float | None = None
) -> tuple[StudySettings, optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """The settings, and the sampler and pruner built from them for the dry run."""
    # Sections are checked in the order the SPEC example lists them; the first mistake is raised.
    name = read_name(r, raw["name"])
    run_dir = os.path.join(base_dir, "runs", name)
    task = read_task(r, raw["task"], base_dir)
    seed = r.integer(raw.get("seed", 0), "seed", Bounds(ge=0, lt=2**32))
    device = read_device(r, raw.get("device", "cpu"))
    objective = read_objective(r, raw["objective"])
    storage = read_storage(r, raw.get("storage"), base_dir, run_dir)
    checkpoints = read_checkpoints(r, raw.get("checkpoints"), base_dir, run_dir, name)
    if "tree" in raw and "warmup" in raw:
        r.fail(
            "warmup",
            "a study either grows a fork tree (tree:) or forks every trial from one warm-up "
            "(warmup:), not both; remove one of the two sections",
        )
    strategy: Strategy = "base" if "warmup" in raw else "tree"
    tree = None
    if strategy == "base":
        warmup = read_warmup(r, raw["warmup"])
        trials = read_trials(r, raw["trials"], budget=budget)
        search_space = read_search_space(r, raw["search_space"], warmup.hparams)
    else:
        trials = read_trials(r, raw["trials"], tree=True, budget=budget)
        search_space = read_search_space(r, raw["search_space"], None)
        scheduled = raw.get("schedule") is not None
        tree = read_tree(r, raw.get("tree"), search_space, trials.budget, scheduled=scheduled)
        # no warm-up: its values are where a tree's study is checked (the preflight); the twin
        # classic study spends the tree's budget (without one, what the tree's shape costs)
        warmup = WarmupSettings(epochs=0.0, steps=None, hparams=start_point(tree, search_space))
        spend = trials.budget if trials.budget is not None else round(tree_cost(tree), 6)
        if trials.budget is None and tree.sized:
            spend = DEFAULT_BUDGET
        trials = dataclasses.replace(trials, n=sum(generation_sizes(tree)), budget=spend)
    data = read_data(r, raw.get("data"))
    fixed = ("warmup.hparams", warmup.hparams) if tree is None else ("tree.hparams", tree.hparams)
    training = read_training(r, raw.get("training"), fixed, search_space)
    sampler, sampler_obj = read_sampler(r, raw.get("sampler"), search_space, seed)
    pruner, pruner_obj = read_pruner(r, raw.get("pruner", {"name": "MedianPruner"}))
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
        schedule=read_schedule(r, raw.get("schedule")),
        sampler=sampler,
        pruner=pruner,
        strategy=strategy,
        tree=tree,
        training=training,
        loggers=read_loggers(r, raw.get("loggers"), base_dir, run_dir),
        gpus=read_gpus(r, raw.get("gpus"), device),
    )
    _check_probe(r, settings)
    return settings, sampler_obj, pruner_obj


def _check_probe(r: Reader, settings: StudySettings) -> None:
    """A cooldown probe decays the study's schedule: it needs one."""
    if settings.tree is not None and settings.tree.probe > 0 and settings.schedule is None:
        r.fail(
            "tree.probe",
            "a cooldown probe decays the learning rate of the study's schedule, and the study "
            "has none; add `schedule: {name: wsd, decay: 0.2}` or set tree.probe: 0",
        )
