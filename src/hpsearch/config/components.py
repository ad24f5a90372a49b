"""The Optuna components a study file names: reading `sampler` and `pruner` (a class in
`optuna.samplers` / `optuna.pruners` and its arguments, checked against the class's signature and
annotations), a dry run of both through two made-up trials at load time, and `make_sampler` /
`make_pruner`, which build them for a study."""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from hpsearch.config.schema import ComponentSettings, Param, StudySettings
from hpsearch.config.space import suggest_space
from hpsearch.config.values import Reader, as_number, clip, did_you_mean, fmt, is_number, show

_MAX_GRID = 10**6  # values of one int range a GridSampler enumerates


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
    r: Reader, value: Any, key: str, module: Any, base: type
) -> tuple[ComponentSettings, type]:
    classes = _classes(module, base)
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        r.fail(
            key,
            f"must be a mapping {{name: <class in {module.__name__}>, <argument>: ...}}, "
            f"got {show(value)}",
        )
    if "name" not in value:
        r.fail(
            f"{key}.name", f"required key is missing; add it, e.g. `name: {next(iter(classes))}`"
        )
    name = value["name"]
    if not isinstance(name, str) or name not in classes:
        hint = did_you_mean(name, classes) if isinstance(name, str) else ""
        r.fail(
            f"{key}.name",
            f"{show(name)} is not a class in {module.__name__}{hint} "
            f"(available: {', '.join(classes)})",
        )
    cls = classes[name]
    kwargs = {k: v for k, v in value.items() if k != "name"}
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for k in kwargs:
            if k not in params:
                r.fail(
                    f"{key}.{clip(str(k))}",
                    f"{name} has no argument {show(k)}{did_you_mean(str(k), params)} "
                    f"(its arguments: {clip(', '.join(params))})",
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
    "float": is_number,
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
    r: Reader, key: str, cls_name: str, param: inspect.Parameter, value: Any
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
        value = as_number(value)
    if any(_fits(a, value) is not False for a in alternatives):
        return value
    if not any(a.split("[", 1)[0].strip() in _FITS for a in alternatives if a != "None"):
        r.fail(
            key,
            f"{cls_name}'s {param.name} takes a Python object ({clip(text)}), which a study "
            f"file cannot give, got {show(value)}; remove {param.name}",
        )
    default = param.default
    example = (
        f", e.g. its default {param.name}: {show(default)}"
        if default is not inspect.Parameter.empty and default is not None
        else ""
    )
    r.fail(
        key,
        f"{cls_name}'s {param.name} takes {clip(text)}, got {show(value)}; give a value of "
        f"that type{example}",
    )


def _build(settings: ComponentSettings, cls: type, extra: dict[str, Any]) -> Any:
    return cls(**copy.deepcopy(settings.kwargs), **extra)


def _validate_build(
    r: Reader, key: str, comp: ComponentSettings, cls: type, extra: dict[str, Any]
) -> Any:
    """Bind and build once at load so that bad arguments fail now, not after the warm-up."""
    try:
        inspect.signature(cls).bind(**comp.kwargs, **extra)
    except TypeError as e:
        r.fail(
            key,
            f"{comp.name}: {clip(str(e))}; give its arguments as keys next to name "
            f"(its arguments: {clip(', '.join(inspect.signature(cls).parameters))})",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _build(comp, cls, extra)
    except Exception as e:
        r.fail(
            key,
            f"{_call(comp)} cannot be built: {type(e).__name__}: {clip(str(e))}; fix the argument",
        )


def _call(comp: ComponentSettings) -> str:
    args = ", ".join(f"{k}={show(v, 60)}" for k, v in comp.kwargs.items())
    return f"{comp.name}({clip(args)})"


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


def read_sampler(
    r: Reader, value: Any, search_space: dict[str, Param], seed: int
) -> tuple[ComponentSettings, optuna.samplers.BaseSampler]:
    if value is None:
        value = {"name": "TPESampler"}
    comp, cls = _component(r, value, "sampler", optuna.samplers, optuna.samplers.BaseSampler)
    if "seed" in comp.kwargs:
        r.fail(
            "sampler.seed",
            f"remove it: the sampler's seed comes from the top-level seed "
            f"(got seed={show(comp.kwargs['seed'])}); set `seed:` instead",
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
                    f"[{fmt(p.low)}, {fmt(p.high)}]; write it as "
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


def read_pruner(r: Reader, value: Any) -> tuple[ComponentSettings, optuna.pruners.BasePruner]:
    if value is None:
        value = {"name": "NopPruner"}
    comp, cls = _component(r, value, "pruner", optuna.pruners, optuna.pruners.BasePruner)
    return comp, _validate_build(r, "pruner", comp, cls, {})


def dry_run(
    r: Reader,
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
        suggest_space(trial, settings.search_space)
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
            key, f"{_call(comp)} fails on a first trial: {type(e).__name__}: {clip(str(e))}; {fix}"
        )
    finally:
        optuna.logging.set_verbosity(verbosity)


def make_sampler(settings: StudySettings, seed: int) -> optuna.samplers.BaseSampler:
    """Build the study's sampler, seeded with `seed` when it takes one.

    A GridSampler gets its grid from `settings.search_space`; a TPESampler counts running
    trials (`constant_liar`) unless the study file says otherwise.
    """
    cls = getattr(optuna.samplers, settings.sampler.name)
    extra = _sampler_extra(cls, settings.search_space, seed)
    if cls is optuna.samplers.TPESampler and "constant_liar" not in settings.sampler.kwargs:
        # workers asking at once must not propose the same values (siblings of one parent in
        # a fork tree above all): TPE counts running trials as bad ones. Optuna 5's default;
        # Optuna 4's was off. With one worker no other trial runs while it samples: no change
        extra["constant_liar"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna 4
        sampler: optuna.samplers.BaseSampler = _build(settings.sampler, cls, extra)
    return sampler


def make_pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    """Build the study's pruner (a NopPruner for `pruner: null`)."""
    pruner: optuna.pruners.BasePruner = _build(
        settings.pruner, getattr(optuna.pruners, settings.pruner.name), {}
    )
    return pruner
