"""The search space: reading `search_space` into `Param`s, asking an Optuna trial for their values
(`suggest`), the hyperparameters a warm-up and a trial train with, and the budget check that
needs the task's data set size."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import optuna

from hpsearch.config.schema import PARAM_KINDS, Param, StudySettings
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
from hpsearch.errors import StudyFileError

_ENTRY_FORMS = "{float: [low, high]}, {int: [low, high]} or {categorical: [a, b, ...]}"


def read_search_space(r: Reader, value: Any, hparams: dict[str, Any] | None) -> dict[str, Param]:
    """The search space; with the warm-up's `hparams` (fork from a base), each key must have a
    warm-up value (a fork tree has no warm-up: None)."""
    if not isinstance(value, dict) or not value:
        r.fail(
            "search_space",
            f"must be a non-empty mapping of hyperparameter to range, e.g. "
            f"{{lr: {{float: [1.0e-5, 1.0e-1], log: true}}}}, got {show(value)}",
        )
    out: dict[str, Param] = {}
    for name, entry in value.items():
        if not isinstance(name, str):
            r.fail("search_space", f"keys must be strings, got {show(name)}")
        key = f"search_space.{clip(name)}"
        param = _param(r, name, entry, key)
        if hparams is not None and name not in hparams:
            r.fail(
                key,
                f"{show(name)} is not in warmup.hparams; add it to warmup.hparams with the "
                f"value the warm-up should use",
            )
        _check_known(r, param, key)
        out[name] = param
    return out


def _param(r: Reader, name: str, value: Any, key: str) -> Param:
    if not isinstance(value, dict):
        r.fail(key, f"must be one of {_ENTRY_FORMS}, got {show(value)}")
    section = r.mapping(value, key, (*PARAM_KINDS, "log", "step"))
    kinds = [k for k in PARAM_KINDS if k in section]
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
        r.fail(key, f"{kind} must be a range [low, high], got {show(bounds)}")
    log = r.boolean(section.get("log", False), f"{key}.log")
    low: float | int
    high: float | int
    step: float | int | None
    if kind == "float":
        low, high, step = _float_range(r, bounds, section.get("step"), log, key)
    else:
        low, high, step = _int_range(r, bounds, section.get("step", 1), log, key)
    if not low < high:
        r.fail(
            key,
            f"low must be < high, got low={fmt(low)} high={fmt(high)}; write the range "
            f"as [low, high] (a fixed value belongs in warmup.hparams only)",
        )
    if log and low <= 0:
        r.fail(key, f"log: true requires low > 0, got low={fmt(low)}; raise low or set log: false")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _float_range(
    r: Reader, bounds: list[Any], step: Any, log: bool, key: str
) -> tuple[float, float, float | None]:
    low, high = (as_number(b) for b in bounds)
    if not (is_number(low) and is_number(high)):
        r.fail(key, f"float range bounds must be numbers, got {show(bounds)}")
    if step is not None:
        step = r.real(step, f"{key}.step", Bounds(gt=0))
    if log and step is not None:
        r.fail(key, "log and step are exclusive: a log range cannot have a step; remove one")
    return float(low), float(high), step


def _int_range(
    r: Reader, bounds: list[Any], step: Any, log: bool, key: str
) -> tuple[int, int, int]:
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        r.fail(
            key,
            f"int range bounds must be integers, got {show(bounds)}; "
            f"use float: for a real-valued range",
        )
    step = r.integer(step, f"{key}.step", Bounds(ge=1))
    if log and step != 1:
        r.fail(
            key,
            f"log and step are exclusive: a log range cannot have a step, got "
            f"step={step}; remove one",
        )
    low, high = bounds
    return low, high, step


def _choices(r: Reader, value: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(value, list) or not value:
        r.fail(key, f"categorical must be a non-empty list of choices, got {show(value)}")
    choices: list[Any] = []
    for c in value:
        c = as_number(c)
        if c is not None and not isinstance(c, str | int | float | bool):
            r.fail(key, f"choices must be strings, numbers, true/false or null, got {show(c)}")
        # Optuna finds a choice by ==, so 1, 1.0 and true would be the same choice.
        if any(c == d and (c is None) == (d is None) for d in choices):
            r.fail(key, f"choices must be distinct, got {show(c)} twice in {show(value)}")
        choices.append(c)
    return tuple(choices)


def _check_known(r: Reader, p: Param, key: str) -> None:
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
                r.fail(key, f"batch_size must be >= 1, got {label}={fmt(v)}")
        return
    bounds = KNOWN_BOUNDS.get(p.name)
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
        if not is_number(v):
            r.fail(key, f"{p.name} choices must be numbers, got {show(v)}")
        if not bounds.ok(v):
            r.fail(key, f"{p.name} must be {bounds.text()}, got {label}={fmt(v)}")


# -- hyperparameters ------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, settings: StudySettings) -> dict[str, Any]:
    """Ask `trial` for a value of every search_space entry, in file order."""
    return suggest_space(trial, settings.search_space)


def suggest_space(trial: optuna.Trial, search_space: Mapping[str, Param]) -> dict[str, Any]:
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


def invalid_values(search_space: Mapping[str, Param], values: Mapping[str, Any]) -> list[str]:
    """What is wrong with values given for search-space keys from outside the sampler (a trial
    enqueued by hand): one line per value that the key's entry could not have sampled. A
    value for a key outside the search space is the user's to give (it is only recorded)."""
    out = []
    for name, value in values.items():
        p = search_space.get(name)
        if p is None:
            continue
        if p.kind == "categorical":
            choices = p.choices or ()
            if not any(value == c and isinstance(value, bool) == isinstance(c, bool)
                       for c in choices):  # fmt: skip
                out.append(f"{name}={value!r} is not among its choices {list(choices)}")
            continue
        assert p.low is not None and p.high is not None
        integral = p.kind == "int"
        if not is_number(value) or (integral and not isinstance(value, int)):
            kind = "an integer" if integral else "a number"
            out.append(f"{name}={value!r} is not {kind}")
        elif not p.low <= value <= p.high:
            out.append(f"{name}={value!r} is outside [{fmt(p.low)}, {fmt(p.high)}]")
        elif p.step is not None and not p.log and not _on_step(value - p.low, p.step):
            out.append(f"{name}={value!r} is not on its step {fmt(p.step)} from {fmt(p.low)}")
    return out


def _on_step(offset: float, step: float) -> bool:
    k = offset / step
    return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))


def warmup_hparams(settings: StudySettings) -> dict[str, Any]:
    """A fresh copy of the warm-up's hyperparameters."""
    return copy.deepcopy(settings.warmup.hparams)


def trial_hparams(settings: StudySettings, sampled: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameters: the warm-up's values overridden by the sampled ones."""
    return {**warmup_hparams(settings), **copy.deepcopy(dict(sampled))}


def check_budgets(settings: StudySettings, samples_per_epoch: int) -> None:
    """Raise StudyFileError for an epoch budget that is 0 of the task's training samples.

    Budgets in epochs become samples as round(epochs * samples_per_epoch) (where `hpsearch.search`
    sizes a run's budgets); a 0 would train nothing, or evaluate or checkpoint after
    every step. `trials.eval_every` defaults to a quarter of `trials.epochs`.
    """
    n = samples_per_epoch
    for key, epochs in (
        ("warmup.epochs", settings.warmup.epochs if settings.strategy == "base" else None),
        ("trials.epochs", settings.trials.epochs),
        ("trials.eval_every", settings.trials.eval_every),
        ("checkpoints.every", settings.checkpoints.every),
    ):
        if epochs is not None and round(epochs * n) < 1:
            raise StudyFileError(
                settings.path,
                key,
                f"{fmt(epochs)} epochs of the task's {n} training samples is 0 samples; the "
                f"minimum is {1 / max(n, 1):.3g} (1 sample); raise it",
            )
