"""The check that a study's search space holds only keys its task can fork: a study-file error
before any training, not a failure in the first fork (or, worse, a fork that silently trains
with its parent's value somewhere).

A fork (`hpsearch.training.fork`) builds the model again with the child's hparams, sets the
optimizer's keys and the batch size, and calls `Task.apply_hparams` for the task's own keys. For
each key a fork changes, the check builds the task (`Task.model` and `Task.optimizer`, on the
meta device) with the start's value and with another value of its range, and refuses the key if

- the weights differ (names, shapes, dtypes): a fork keeps the parent's weights;
- it is `dropout` and nothing differs: the model holds no dropout for a fork to change;
- a param-group key is missing from a group of the task's optimizer;
- `Task.apply_hparams` cannot apply it (KeyError, NotImplementedError);
- after the fork's route (the task built with the start's value, the model built again with the
  other, `apply_hparams`), the task holds something other than a task built with the other
  value holds (`hpsearch.training.holdings`): a value it keeps outside `Task.model` that no fork
  reaches, such as a loss built in `Task.optimizer`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from hpsearch.config import Param, StudySettings, warmup_hparams
from hpsearch.config.forkable import DROPOUT_KEY, FORK_KEYS, FORKABLE
from hpsearch.config.values import clip, show
from hpsearch.errors import ForkError, HpsearchError, StudyFileError, TaskError
from hpsearch.task import Task
from hpsearch.training.fork import apply_task_hparams
from hpsearch.training.holdings import differences, holdings
from hpsearch.training.state import rng_state, set_rng_state


def check_forkable(settings: StudySettings, task_cls: type[Task]) -> None:
    """Raise StudyFileError for a search_space key a fork cannot apply to a restored state.

    A fork tree changes the registry's keys (`FORKABLE`) and those the task lists in
    `Task.forkable_hparams` (a key its `training_step` reads from hparams at every step); its
    roots sample the others. Forking from a base changes every key of the space: one outside
    those needs `task_cls` to override `Task.apply_hparams`. Every key a fork changes is then
    checked as the module docstring says.
    """
    from hpsearch.config.taskload import overrides  # imports torch; only needed here

    read_per_step = set(getattr(task_cls, "forkable_hparams", ()))
    forked = [n for n in settings.search_space if n in FORKABLE or n in read_per_step]
    if settings.strategy == "base":
        forked = list(settings.search_space)
        if not overrides(task_cls, "apply_hparams"):
            for name in forked:
                if name not in FORKABLE and name not in read_per_step:
                    raise StudyFileError(
                        settings.path,
                        f"search_space.{clip(name)}",
                        f"{show(name)} cannot be forked: it changes the model's shape/data, "
                        f"which the warm-up fixes. Remove it from search_space, or implement "
                        f"Task.apply_hparams in {task_cls.__name__} to apply it to a restored "
                        "model.",
                    )
    if forked:
        _Check(settings, task_cls).run(forked)
    if settings.strategy == "tree":  # the roots' own keys: a typo samples a value nothing reads
        _Check(settings, task_cls).typos([n for n in settings.search_space if n not in forked])


@dataclass
class _Built:
    task: Any
    model: Any
    optimizer: Any


class _Check:
    def __init__(self, settings: StudySettings, task_cls: type[Task]) -> None:
        self.settings, self.task_cls = settings, task_cls
        self.name = task_cls.__name__
        self.start = warmup_hparams(settings)

    def fail(self, key: str, message: str) -> StudyFileError:
        return StudyFileError(self.settings.path, f"search_space.{clip(key)}", message)

    def run(self, forked: list[str]) -> None:
        with _kept_rng():
            ref = self.build(self.start)
            for key in forked:
                if FORK_KEYS.get(key) == "param_group":
                    self.check_groups(key, ref.optimizer)
                other = _other_value(self.settings.search_space[key], self.start.get(key))
                if other is not None:
                    self.check_key(key, other, ref)

    def build(self, hparams: dict[str, Any], into: Any = None) -> _Built:
        """The task's model and optimizer for `hparams`, on the meta device if the task allows
        it (else on the CPU). `into`: the task instance whose model a fork builds again (its
        model only, as the fork does)."""
        task = into if into is not None else self.task_cls()

        def made() -> _Built:
            model = task.model(dict(hparams))
            return _Built(task, model, None if into else task.optimizer(model, dict(hparams)))

        try:
            try:
                with torch.device("meta"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return made()
            except Exception:  # it loads weights, calls .item(), ...: build it for real, once
                return made()
        except (HpsearchError, KeyboardInterrupt):
            raise
        except Exception as exc:
            shown = {k: hparams[k] for k in self.settings.search_space if k in hparams}
            raise TaskError(
                f"{self.settings.path}: task: building the model and optimizer of "
                f"{self.settings.task} with {shown} failed: {type(exc).__name__}: "
                f"{clip(str(exc))}; fix the task or the search space"
            ) from exc

    def typos(self, keys: list[str]) -> None:
        """Refuse a sampled key whose name is close to a key the study knows (the registry's,
        the task's `forkable_hparams`, the fixed hparams) and whose value changes nothing the
        task builds: a typo (`lrr` for `lr`) samples values no training reads."""
        import difflib

        known = set(FORKABLE) | set(getattr(self.task_cls, "forkable_hparams", ()))
        known |= set(self.start) - set(self.settings.search_space)
        suspects = {k: difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.75)
                    for k in keys if k not in known}  # fmt: skip
        suspects = {k: close[0] for k, close in suspects.items() if close}
        if not suspects:
            return
        with _kept_rng():
            ref = self.build(self.start)
            for key, close in suspects.items():
                other = _other_value(self.settings.search_space[key], self.start.get(key))
                if other is None:
                    continue
                fresh = self.build({**self.start, key: other})
                if _same_build(ref, fresh, self.name):
                    raise self.fail(
                        key,
                        f"did you mean {close!r}? {self.name} builds the same model and "
                        f"optimizer for {key}={show(self.start.get(key))} and {show(other)}, "
                        f"so every value sampled for it would be lost; if "
                        f"{self.name}.training_step reads hparams[{key!r}], list it in "
                        f"{self.name}.forkable_hparams",
                    )

    def check_groups(self, key: str, optimizer: Any) -> None:
        groups = getattr(optimizer, "param_groups", None) or []
        lacking = [g for g in groups if key not in g]
        if lacking:
            has = ", ".join(k for k in lacking[0] if k != "params")
            raise self.fail(
                key,
                f"the task's optimizer {type(optimizer).__name__} has no {key!r} (its param "
                f"groups have {has}), so a fork cannot set it; remove {key} from search_space, "
                f"or have {self.name}.optimizer return one that has it"
                + (" (e.g. torch.optim.SGD)" if key == "momentum" else ""),
            )

    def check_key(self, key: str, other: Any, ref: _Built) -> None:
        a, b = self.start.get(key), other
        hp = {**self.start, key: other}
        fresh = self.build(hp)
        changed = _weights_changed(ref.model, fresh.model)
        if changed:
            fix = (
                "remove it from search_space, or grow a fork tree instead (its roots sample such "
                "a key and their children keep it)"
                if self.settings.strategy == "base"
                else "build the model so that its weights do not depend on it, or remove it "
                "from search_space"
            )
            raise self.fail(
                key,
                f"{show(key)} cannot be forked: {self.name}.model builds other weights for "
                f"{key}={show(b)} than for {show(a)} ({changed}), and a fork keeps the parent's "
                f"weights; {fix}",
            )
        want = holdings({"model": fresh.model, self.name: fresh.task})
        if key == DROPOUT_KEY and not differences(
            holdings({"model": ref.model, self.name: ref.task}), want
        ):
            raise self.fail(
                key,
                f"the model that {self.name}.model builds ({type(ref.model).__name__}) has no "
                "torch.nn.Dropout module, so a fork has no dropout to change; add "
                "torch.nn.Dropout(hparams['dropout']) to the model, or remove dropout from "
                f"search_space (nothing it builds differs between dropout={show(a)} and "
                f"{show(b)}: no Dropout module's p, no MultiheadAttention's or RNN's dropout, "
                "no number of a module, config or the task)",
            )
        public = holdings({self.name: fresh.task}, private=False)
        if not self.calls_apply(key) and not differences(
            holdings({self.name: ref.task}, private=False), public
        ):
            return  # the task holds nothing of the key, and the fork's model is model(hp)
        forked = self.fork_route(key, other, hp)
        got = holdings({"model": forked.model, self.name: forked.task}, private=False)
        missed = differences(got, holdings({"model": fresh.model, self.name: fresh.task},
                                           private=False))  # fmt: skip
        if missed:
            shown = "; ".join(f"{p}: {show(x)}, not {show(y)}" for p, x, y in missed[:3])
            raise self.fail(
                key,
                f"a fork to {key}={show(b)} does not reach everything that holds it: after "
                f"the fork, {shown} (what a task built with {key}={show(b)} holds). A fork "
                f"builds the model again with {self.name}.model and calls apply_hparams; set "
                f"these in {self.name}.model or {self.name}.apply_hparams, or read "
                f"hparams[{key!r}] in training_step",
            )

    def calls_apply(self, key: str) -> bool:
        """Whether a fork that changes `key` calls `Task.apply_hparams` (see training.fork)."""
        from hpsearch.config.taskload import overrides

        read_per_step = set(getattr(self.task_cls, "forkable_hparams", ()))
        if key not in FORK_KEYS and key not in read_per_step:
            return True
        return key == DROPOUT_KEY and overrides(self.task_cls, "apply_hparams")

    def fork_route(self, key: str, other: Any, hp: dict[str, Any]) -> _Built:
        """The task as a fork leaves it: built with the start's value, its model built again
        with the other one, then `apply_hparams` for what hpsearch does not set itself."""
        forked = self.build(self.start)
        model = self.build(hp, into=forked.task).model
        if self.calls_apply(key):
            try:
                apply_task_hparams(forked.task, model, forked.optimizer, {key: other})
            except ForkError as exc:
                raise self.fail(key, str(exc)) from None
            except TaskError as exc:
                raise TaskError(f"{self.settings.path}: task: {exc}") from exc
        return _Built(forked.task, model, forked.optimizer)


def _same_build(a: _Built, b: _Built, name: str) -> bool:
    """Whether two builds of the task hold the same: weights, everything the model and the task
    keep, and the optimizer's settings."""
    if _weights_changed(a.model, b.model):
        return False
    if differences(holdings({"model": a.model, name: a.task}),
                   holdings({"model": b.model, name: b.task})):  # fmt: skip
        return False

    def groups(built: _Built) -> list[dict[str, Any]]:
        found = getattr(built.optimizer, "param_groups", None) or []
        return [{k: v for k, v in g.items() if k != "params"} for g in found]

    return groups(a) == groups(b)


def _weights_changed(a: torch.nn.Module, b: torch.nn.Module) -> str:
    """What differs between two models' weights (names, shapes, dtypes), shown; '' if none."""
    sa, sb = a.state_dict(), b.state_dict()
    out = [f"{k} only for one" for k in sorted(set(sa) ^ set(sb))]
    for k in sorted(set(sa) & set(sb)):
        x, y = sa[k], sb[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            out.append(f"{k} {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
    shown = ", ".join(out[:3]) + (f" and {len(out) - 3} more" if len(out) > 3 else "")
    return shown.replace("torch.", "")


def _other_value(param: Param, value: Any) -> Any:
    """A value of the key's range other than `value`, or None if it has none."""
    if param.kind == "categorical":
        return next((c for c in param.choices or () if c != value), None)
    for end in (param.low, param.high):
        if end is not None and end != value:
            return end
    return None


@contextmanager
def _kept_rng() -> Iterator[None]:
    """Building the task may draw from the global RNGs (a real build initialises weights)."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)
