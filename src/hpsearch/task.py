"""`hpsearch.Task`: what a user writes. hpsearch owns the training loop; the task owns the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class Task:
    """Base class of a user's training task.

    Subclass it and implement the five required methods; hpsearch builds the loop, the data order,
    the checkpoints and the search around them::

        class DigitsMLP(hpsearch.Task):
            def datasets(self): return train, val
            def model(self, hparams): return MLP(hparams["hidden"], hparams["dropout"])
            def optimizer(self, model, hparams):
                return torch.optim.AdamW(model.parameters(), lr=hparams["lr"])
            def loss(self, model, batch):
                x, y = batch
                return torch.nn.functional.cross_entropy(model(x), y)
            def evaluate(self, model, loader): return {"val_accuracy": ...}

    `hparams` is one dict of every key a trial trains with: the study file's fixed values
    (`tree.hparams`, or a warm-up's `warmup.hparams`) overridden by the trial's sampled ones. A
    fork builds the model again with `model(child's hparams)` and moves the parent's weights
    into it, so whatever `model()` does with a key reaches the child; a key kept elsewhere (set
    in `optimizer()`, on the task) is handled by overriding `apply_hparams`, or, for a key
    `training_step` reads at every step (a loss weight), by naming it in `forkable_hparams`.
    """

    forkable_hparams: tuple[str, ...] = ()
    """Keys of your own that a fork may change with no help from the task: `training_step` reads
    them from its `hparams` at every step, so a fork changes them by changing hparams alone
    (nothing in the model or optimizer holds them). A search_space key that is neither one of
    hpsearch's forkable keys nor listed here needs `apply_hparams`."""

    def datasets(self) -> tuple[Dataset, Dataset]:
        """Return (train, validation) map-style datasets."""
        raise NotImplementedError

    def model(self, hparams: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def optimizer(self, model: torch.nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Return the scalar training loss of one batch (hpsearch calls backward and step)."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
        """Return metrics on the validation loader; must contain the study's objective metric."""
        raise NotImplementedError

    # Optional hooks -------------------------------------------------------------------------

    def scheduler(
        self, optimizer: torch.optim.Optimizer, hparams: dict[str, Any], total_steps: int
    ) -> Any | None:
        """Return a torch LR scheduler stepped once per optimizer step, or None (the default)."""
        return None

    def apply_hparams(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, hparams: dict[str, Any]
    ) -> None:
        """Apply what a fork changes that `model()` does not build: `model` is the one
        `model(child's hparams)` built (it holds the parent's weights), `optimizer` the parent's
        (hpsearch sets lr, weight decay, momentum, betas and eps in it), `hparams` the keys that
        changed -- your own keys, and `dropout` too when you override this method (for a
        dropout you keep outside the model). Raise KeyError for a key you keep nowhere else:
        for `dropout` that means "nothing more to set"; for your own key, that it cannot fork."""
        raise KeyError(next(iter(hparams)))

    def training_step(
        self, model: torch.nn.Module, batch: Any, hparams: dict[str, Any]
    ) -> torch.Tensor:
        """Return the scalar loss of one (micro-)batch; hpsearch calls backward and step.

        The default is `self.loss(model, batch)`. Override it to read the trial's current
        hyperparameters (after a fork, the child's) instead of keeping them on `self`; treat
        `hparams` as read-only. A task that overrides it need not implement `loss`."""
        return self.loss(model, batch)

    def state_dict(self) -> dict[str, Any]:
        """State the task keeps outside the model and optimizer (an EMA copy of the weights, a
        running statistic), saved with every checkpoint and given back to `load_state_dict` on
        resume and in a fork. A dict (nested dicts and lists allowed) of tensors and JSON values;
        tensors come back on the run's device. The default: no state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` returned. Override both or neither."""

    def collate(self, samples: Sequence[Any]) -> Any:
        """Turn a list of samples into a batch. Defaults to torch's default_collate."""
        return torch.utils.data.default_collate(list(samples))


REQUIRED_METHODS = ("datasets", "model", "optimizer", "loss", "evaluate")
