"""Forking: change the forkable hyperparameters of a restored training state, and nothing else.

- `lr`: every param group's `lr` moves by the factor new/old, so per-group multipliers stay; a
  task scheduler's base LRs move likewise and its step count is kept.
- `weight_decay`, `momentum`, `betas`, `eps`: the param groups that hold the old value take the
  new one; a group the task set apart (no weight decay for biases, say) keeps its own.
- `dropout`: `p` of every `torch.nn.Dropout*` module.
- `batch_size`: the data stream continues from the same sample position with the new size
  (with gradient accumulation, the new size must divide `training.accumulate_samples`, so the
  samples per optimizer step stay what they were).
- a key the task lists in `Task.forkable_hparams`: only the hparams change; `training_step`
  reads it from them at the next step.
- anything else: `Task.apply_hparams`; without it the key is not forkable.

Which key is which is the registry in `hpsearch.config.forkable`, which `check_forkable` reads
too: a key added there is applied here by its kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from hpsearch.config import DROPOUT_KEY, FORK_KEYS, FORKABLE, dropout_types
from hpsearch.errors import ForkError
from hpsearch.training.hatches import check_batch_size

if TYPE_CHECKING:
    from hpsearch.training.loop import Trainer

__all__ = ["FORKABLE", "fork", "reapply_model_hparams"]

_DROPOUTS = dropout_types()


def fork(trainer: Trainer, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply `changes` to a restored trainer; return the keys whose value actually changed.

    Raises ForkError naming the key when it cannot be applied. Unchanged values are skipped,
    so forking with the parent's own values is a no-op.
    """
    changed = {k: v for k, v in changes.items() if trainer.hparams.get(k) != v}
    read_per_step = set(getattr(trainer.task, "forkable_hparams", ()))
    custom: dict[str, Any] = {}
    for key, value in changed.items():
        kind = FORK_KEYS.get(key)  # what the key is: the registry in hpsearch.config.forkable
        if kind == "lr":
            _set_lr(trainer, float(value))
        elif kind == "param_group":
            _set_group_key(trainer.optimizer, key, value, trainer.hparams.get(key))
        elif kind == "dropout":
            _set_dropout(trainer.model, float(value))
        elif kind == "batch_size":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ForkError(f"batch_size must be a positive integer, got {value!r}")
            check_batch_size(trainer.training, value)
            trainer.stream.set_batch_size(value)
        elif key in read_per_step:
            pass  # Task.training_step reads it from trainer.hparams, updated below
        else:
            custom[key] = value
    if custom:
        try:
            trainer.task.apply_hparams(trainer.model, trainer.optimizer, dict(custom))
        except (KeyError, NotImplementedError) as exc:
            key = exc.args[0] if exc.args and exc.args[0] in custom else next(iter(custom))
            raise ForkError(
                f"'{key}' cannot be forked: hpsearch applies only {', '.join(FORKABLE)}; "
                f"implement {type(trainer.task).__name__}.apply_hparams to apply '{key}' to a "
                "restored model, or keep it fixed by the warm-up"
            ) from None
    trainer.hparams.update(changed)
    return changed


def _set_lr(trainer: Trainer, lr: float) -> None:
    """Move every group's LR by the same factor, new lr / old lr: a group the task gave its own
    multiplier (a smaller LR for embeddings, say) keeps it. A task scheduler's base LRs move with
    them, so it keeps its position; the study's schedule reads the new lr at the next step."""
    old = float(trainer.hparams["lr"])
    sched = trainer.scheduler
    bases = getattr(sched, "base_lrs", None) if sched is not None else None

    def moved(x: float) -> float:
        return x * (lr / old) if old else lr

    for i, group in enumerate(trainer.optimizer.param_groups):
        group["lr"] = moved(group["lr"])
        if "initial_lr" in group:
            group["initial_lr"] = moved(group["initial_lr"])
        if bases is not None:
            bases[i] = moved(bases[i])
    if sched is not None and hasattr(sched, "_last_lr"):
        sched._last_lr = [g["lr"] for g in trainer.optimizer.param_groups]


def _set_group_key(optimizer: torch.optim.Optimizer, key: str, value: Any, old: Any) -> None:
    """Set `key` in the groups that hold the old hyperparameter's value. A group the task set
    apart (no weight decay for biases and norms, say) keeps its own value; if no group holds the
    old value, every group takes the new one."""
    groups = optimizer.param_groups
    for group in groups:
        if key not in group:
            raise ForkError(
                f"'{key}' cannot be forked: the task's optimizer {type(optimizer).__name__} has "
                f"no '{key}' (its param groups have {', '.join(k for k in group if k != 'params')})"
            )
    targets = [g for g in groups if old is not None and _same(g[key], old)] or groups
    for group in targets:
        current = group[key]
        if isinstance(current, tuple):
            group[key] = tuple(float(v) for v in value)
        elif isinstance(current, (int, float)) and not isinstance(current, bool):
            group[key] = float(value)
        else:
            group[key] = value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def _set_dropout(model: torch.nn.Module, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ForkError(f"dropout must be in [0, 1), got {p}")
    found = False
    for module in model.modules():
        if isinstance(module, _DROPOUTS):
            module.p = p
            found = True
    if not found:
        raise ForkError(
            "'dropout' cannot be forked: the model has no torch.nn.Dropout* module; implement "
            "Task.apply_hparams to apply it"
        )


def reapply_model_hparams(trainer: Trainer, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """After copying a saved state into a trainer built for other hparams: set what lives in the
    model rather than in the saved tensors (dropout, keys of `Task.apply_hparams`)."""
    if DROPOUT_KEY in new and old.get(DROPOUT_KEY) != new[DROPOUT_KEY]:
        _set_dropout(trainer.model, float(new[DROPOUT_KEY]))
    read_per_step = set(getattr(trainer.task, "forkable_hparams", ()))
    custom = {
        k: v
        for k, v in new.items()
        if k not in FORKABLE and k not in read_per_step and k in old and old[k] != v
    }
    if custom:
        trainer.task.apply_hparams(trainer.model, trainer.optimizer, custom)
