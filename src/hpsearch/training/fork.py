"""Forking: change the forkable hyperparameters of a restored training state, and nothing else.

A fork's model is the one `Task.model` builds with the child's hparams, holding the parent's
weights and buffers (`rebuild_model`, at every fork that changes something); its optimizer and
data stream are the parent's with the child's values set:

- `lr`: every param group's `lr` moves by the factor new/old, so per-group multipliers stay (a
  group at the old LR takes the new one exactly); a task scheduler's base LRs move likewise and
  its step count is kept.
- `weight_decay`, `momentum`, `betas`, `eps`: the param groups that hold the old value take the
  new one; a group the task set apart (no weight decay for biases, say) keeps its own.
- `dropout`: as the model is built again, every dropout `Task.model` puts in it is the
  child's: `torch.nn.Dropout*` modules, `torch.nn.MultiheadAttention`'s and
  `torch.nn.RNN`/`LSTM`/`GRU`'s float `dropout`, a float of the task's own modules, a Hugging
  Face config. A task that keeps the dropout somewhere `Task.model` does not build sets it in
  `Task.apply_hparams`, which the fork then calls with `{"dropout": p}` (a KeyError for it there
  means "nothing more to set").
- `batch_size`: the data stream continues from the same sample position with the new size
  (with gradient accumulation, the new size must divide `training.accumulate_samples`, so the
  samples per optimizer step stay what they were).
- a key the task lists in `Task.forkable_hparams`: only the hparams change; `training_step`
  reads it from them at the next step.
- any other key: `Task.apply_hparams` sets what `Task.model` does not build with it (the
  optimizer's, the task's own); without `apply_hparams` the key is not forkable.

Which key is which is the registry in `hpsearch.config.forkable`; `check_forkable`
(`hpsearch.training.forkcheck`) checks at load that this reaches everything holding each key.
Errors: ForkError for a key or value a fork cannot apply; TaskError when the task's own code
(`Task.model`, `Task.apply_hparams`) fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from hpsearch.config import DROPOUT_KEY, FORK_KEYS, FORKABLE
from hpsearch.errors import CheckpointMismatch, ForkError, HpsearchError, TaskError
from hpsearch.training.build import holds_meta
from hpsearch.training.hatches import check_batch_size, has_task_state
from hpsearch.training.state import check_model_keys, load_model_state, rng_state, set_rng_state

if TYPE_CHECKING:
    from hpsearch.task import Task
    from hpsearch.training.loop import Trainer

__all__ = ["FORKABLE", "fork", "rebuild_model"]


def fork(trainer: Trainer, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply `changes` to a restored trainer; return the keys whose value actually changed.

    Raises ForkError naming the key when it cannot be applied, before anything is changed.
    Unchanged values are skipped, so forking with the parent's own values is a no-op.
    """
    changed = {k: v for k, v in changes.items() if trainer.hparams.get(k) != v}
    read_per_step = set(getattr(trainer.task, "forkable_hparams", ()))
    custom = {k: v for k, v in changed.items() if k not in FORK_KEYS and k not in read_per_step}
    _check(trainer, changed, custom)
    if not changed:
        return changed
    try:
        rebuild_model(trainer, {**trainer.hparams, **changed})
    except CheckpointMismatch as exc:
        keys = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        raise ForkError(
            f"the fork to {keys} cannot keep the parent's weights: "
            f"{type(trainer.task).__name__}.model builds other weights for it ({exc}). A key "
            "that changes the weights cannot be forked: keep it fixed by the warm-up or the "
            "tree's roots"
        ) from None
    for key, value in changed.items():
        kind = FORK_KEYS.get(key)
        if kind == "lr":
            _set_lr(trainer, float(value))
        elif kind == "param_group":
            _set_group_key(trainer.optimizer, key, value, trainer.hparams.get(key))
        elif kind == "batch_size":
            trainer.stream.set_batch_size(value)
    if custom:
        apply_task_hparams(trainer.task, trainer.model, trainer.optimizer, custom)
    if DROPOUT_KEY in changed and _overrides_apply(trainer.task):
        apply_task_hparams(
            trainer.task, trainer.model, trainer.optimizer, {DROPOUT_KEY: changed[DROPOUT_KEY]}
        )
    trainer.hparams.update(changed)
    return changed


def _check(trainer: Trainer, changed: Mapping[str, Any], custom: Mapping[str, Any]) -> None:
    """Refuse what the fork cannot apply before it changes anything."""
    for key, value in changed.items():
        kind = FORK_KEYS.get(key)
        if kind == "batch_size":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ForkError(f"batch_size must be a positive integer, got {value!r}")
            check_batch_size(trainer.training, value)
        elif kind == "dropout":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ForkError(f"dropout must be a number in [0, 1), got {value!r}")
            if not 0.0 <= float(value) < 1.0:
                raise ForkError(f"dropout must be in [0, 1), got {value}")
        elif kind == "param_group":
            for group in trainer.optimizer.param_groups:
                if key not in group:
                    raise ForkError(
                        f"'{key}' cannot be forked: the task's optimizer "
                        f"{type(trainer.optimizer).__name__} has no '{key}' (its param groups "
                        f"have {', '.join(k for k in group if k != 'params')})"
                    )
    if custom and not _overrides_apply(trainer.task):
        key = next(iter(custom))
        raise ForkError(
            f"'{key}' cannot be forked: hpsearch applies only {', '.join(FORKABLE)}; "
            f"implement {type(trainer.task).__name__}.apply_hparams to apply '{key}' to a "
            "restored model, or keep it fixed by the warm-up"
        )


def _overrides_apply(task: Any) -> bool:
    from hpsearch.config.taskload import overrides  # imports torch: here, not in config

    return overrides(type(task), "apply_hparams")


def apply_task_hparams(
    task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer, keys: Mapping[str, Any]
) -> None:
    """`Task.apply_hparams(model, optimizer, keys)`, its answer said as what it is.

    A KeyError or NotImplementedError for a key of the task's own: ForkError (the task cannot
    fork it); for `dropout`, which hpsearch sets in the model itself, it means there is nothing
    more to set. Any other exception from the task's code: TaskError."""
    name = f"{type(task).__name__}.apply_hparams"
    try:
        task.apply_hparams(model, optimizer, dict(keys))
    except (KeyError, NotImplementedError) as exc:
        named = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
        if named is not None and (not isinstance(named, str) or named not in keys):
            # not the task saying "I cannot apply this key": a lookup in its code failed
            raise TaskError(f"{name} failed on {', '.join(keys)}: KeyError: {exc}") from exc
        key = named if named is not None else next(iter(keys))
        if key == DROPOUT_KEY:
            return  # hpsearch set it in the model; the task keeps it nowhere else
        raise ForkError(
            f"'{key}' cannot be forked: {name} raised {type(exc).__name__} for it; apply it "
            f"there (it is given the model Task.model built with the child's hparams), or keep "
            "it fixed by the warm-up or the tree's roots"
        ) from None
    except HpsearchError:
        raise
    except Exception as exc:
        raise TaskError(
            f"{name} failed on {', '.join(keys)}: {type(exc).__name__}: {exc}; fix the task"
        ) from exc


def rebuild_model(trainer: Trainer, hparams: Mapping[str, Any]) -> None:
    """Make the trainer's model the one `Task.model(hparams)` builds, holding the tensors the
    model holds now: the very Parameter and buffer objects (the optimizer's state stays theirs),
    each parameter as trainable as it was. Everything the model keeps outside its tensors (a
    dropout's `p`, an attention's float, a loss module, a config) is then what the task builds
    for `hparams`, as in a fresh restore of a checkpoint with those hparams -- never what an
    earlier node left in a reused model. The model is built on the meta device (no memory for
    weights; for real only if it holds tensors its state dict does not: non-persistent buffers,
    torchmetrics states, tensors kept as attributes, which the task makes); the global
    RNGs and the task's own state (`Task.state_dict`) are left as they were.

    Raises CheckpointMismatch if the model built has other weights (names, shapes, dtypes), and
    TaskError if `Task.model` fails."""
    task, live = trainer.task, trainer.model
    tensors = live.state_dict(keep_vars=True)
    trainable = {id(p): p.requires_grad for p in live.parameters()}
    kept = task.state_dict() if has_task_state(task) else None
    saved = rng_state()
    try:
        model = _build(task, hparams, trainer.device, meta=True)
        check_model_keys(model, tensors)
        load_model_state(model, tensors, assign=True)
        if holds_meta(model):  # a tensor its state dict does not hold (a metric's state)
            model = _build(task, hparams, trainer.device, meta=False)
            load_model_state(model, tensors, assign=True)
    finally:
        set_rng_state(saved)
        if kept is not None:  # Task.model may reset what the task keeps
            task.load_state_dict(kept)
    for p in model.parameters():
        p.requires_grad_(trainable.get(id(p), p.requires_grad))
    model.train(live.training)
    trainer.model = model


def _build(task: Task, hparams: Mapping[str, Any], device: torch.device, *, meta: bool) -> Any:
    try:
        if meta:
            try:
                with torch.device("meta"):
                    return task.model(dict(hparams))
            except Exception:  # it loads weights, calls .item(), ...: build it for real
                pass
        return task.model(dict(hparams)).to(device)
    except HpsearchError:
        raise
    except Exception as exc:
        raise TaskError(
            f"{type(task).__name__}.model failed building the model for {dict(hparams)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _set_lr(trainer: Trainer, lr: float) -> None:
    """Move every group's LR by the same factor, new lr / old lr: a group the task gave its own
    multiplier (a smaller LR for embeddings, say) keeps it, and a group at the old LR takes the
    new one exactly (as a model built with it has). A task scheduler's base LRs move with them,
    so it keeps its position; the study's schedule reads the new lr at the next step."""
    old = float(trainer.hparams["lr"])
    sched = trainer.scheduler
    bases = getattr(sched, "base_lrs", None) if sched is not None else None

    def moved(x: float) -> float:
        if x == old or not old:
            return lr
        return x * (lr / old)

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
