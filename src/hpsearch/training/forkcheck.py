"""The check that a study's search space holds only keys its task can fork: each key the
registry (`hpsearch.config.forkable`) names must find its target in the model and optimizer the
task builds -- a study-file error before any training, not a failure in the first fork."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from hpsearch.config import StudySettings, warmup_hparams
from hpsearch.config.forkable import FORK_KEYS, FORKABLE, dropout_types
from hpsearch.config.values import clip, show
from hpsearch.errors import HpsearchError, StudyFileError, TaskError
from hpsearch.task import Task
from hpsearch.training.state import rng_state, set_rng_state


def check_forkable(settings: StudySettings, task_cls: type[Task]) -> None:
    """Raise StudyFileError for a search_space key a fork cannot apply to a restored state.

    The FORKABLE keys can if the task's model and optimizer hold them: a param-group key
    (`momentum`, `eps`, ...) must be in every param group, `dropout` needs a `torch.nn.Dropout*`
    module; both are checked on a model and optimizer built once with the warm-up's hparams (on
    the meta device, so no memory is spent on weights). Any other key is forkable only if
    `task_cls` overrides `Task.apply_hparams` or lists it in `Task.forkable_hparams` (a key its
    `training_step` reads from hparams at every step, so a fork needs to change nothing else).
    """
    from hpsearch.config.taskload import overrides  # imports torch; only needed here

    read_per_step = set(getattr(task_cls, "forkable_hparams", ()))
    # a fork tree samples the keys a fork cannot change in its roots only
    if settings.strategy == "base" and not overrides(task_cls, "apply_hparams"):
        for name in settings.search_space:
            if name not in FORKABLE and name not in read_per_step:
                raise StudyFileError(
                    settings.path,
                    f"search_space.{clip(name)}",
                    f"{show(name)} cannot be forked: it changes the model's shape/data, which the "
                    f"warm-up fixes. Remove it from search_space, or implement "
                    f"Task.apply_hparams in {task_cls.__name__} to apply it to a restored model.",
                )
    _check_fork_targets(settings, task_cls)


def _check_fork_targets(settings: StudySettings, task_cls: type[Task]) -> None:
    # What the fork applies itself (hpsearch.training.fork): the same keys, the same test.
    searched = [n for n in settings.search_space if FORK_KEYS.get(n) in ("param_group", "dropout")]
    if not searched:
        return
    model, optimizer = _build_for_check(settings, task_cls)
    dropouts = dropout_types()
    for name in searched:
        key = f"search_space.{name}"
        if FORK_KEYS[name] == "dropout":
            if not any(isinstance(m, dropouts) for m in model.modules()):
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
            f"warmup.hparams failed: {type(exc).__name__}: {clip(str(exc))}; fix the task or "
            f"warmup.hparams"
        ) from exc
    finally:
        set_rng_state(saved)
