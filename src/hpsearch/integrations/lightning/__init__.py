"""`LightningTask`: a user's LightningModule and LightningDataModule, unchanged, in hpsearch's loop.

    class DigitsTask(LightningTask):
        module = DigitsModule        # a LightningModule class, built with the trial's hparams
        datamodule = DigitsData      # a LightningDataModule class (or any callable making one)

and `task: path/to/file.py:DigitsTask` in the study file. What Lightning's Trainer would do, done
inside hpsearch's loop (which owns the data order, the RNG, the checkpoints and the forks):

- `Task.model`: `module(**hparams)` with the hyperparameters its `__init__` names (all of them if
  it takes `**kwargs`); `datamodule()` gives the data: `prepare_data()`, `setup("fit")`, then
  the datasets and collate function of `train_dataloader()` / `val_dataloader()`. Their batch
  size and shuffling are not used: `hparams["batch_size"]` and hpsearch's order are.
- `Task.optimizer` / `Task.scheduler`: `configure_optimizers()` in any single-optimizer form (an
  optimizer; a list of one; `([opt], [sched])`; a dict with `optimizer` and `lr_scheduler`, a
  scheduler or a config dict with `interval` and `frequency`). A scheduler stepped per `"step"`
  steps every `frequency` optimizer steps; per `"epoch"` (Lightning's default), every
  `frequency` epochs of ceil(len(train) / batch_size) steps. Its step count is checkpointed with
  it. A `ReduceLROnPlateau` is stepped with the study's objective at each evaluation.
- `Task.loss`: `training_step(batch, batch_idx)` (a tensor or a dict with "loss"); `batch_idx`
  counts the batches this run trained before this one. `self.log` there is dropped; a
  torchmetrics `Metric` logged there is reset at the end of each training epoch, as Lightning
  resets it.
- The training hooks, in Lightning's order: `on_train_epoch_start` before an epoch's first
  batch, `on_train_batch_start`, `training_step`, `on_before_zero_grad` (once per optimizer
  step), `on_before_optimizer_step`, `optimizer_step` (a module's own: its `optimizer.step(
  closure=optimizer_closure)` steps, the closure returning the loss, since hpsearch has run
  the forward and backward already), `on_train_batch_end` (once per optimizer step), and
  `on_train_epoch_end` right before the next epoch's first batch (after the evaluation at the
  epoch's end, as in Lightning). Epochs are len(train) samples, counted as Lightning counts a
  batch's size; a batch whose size cannot be inferred turns the epoch hooks off for the run.
- `Task.evaluate`: `on_validation_epoch_start`, `validation_step(batch, batch_idx)` for every
  batch, `on_validation_epoch_end`, with every `self.log` / `self.log_dict` collected and reduced
  over the epoch as Lightning does: `reduce_fx` mean (weighted by the batch size, given or
  inferred from the batch), sum, max or min; a torchmetrics `Metric` by `compute()`, then
  `reset()`.
- Exact resume and forks of what the module keeps besides its `state_dict()`: every torchmetrics
  `Metric`'s states (a running accumulator mid-epoch included) and non-persistent buffers are
  saved with the task's own state, as are the batch and sample counts; EMA weights kept in a
  `torch.optim.swa_utils.AveragedModel` or in buffers are part of the module's state.

Not supported (refused or documented): manual optimization, several optimizers, a hook that
reads `self.trainer` (it is None), `on_train_batch_start` returning -1, Trainer flags
(precision, clipping: use the study file's settings), and Lightning callbacks.
"""

from __future__ import annotations

from hpsearch.integrations.lightning import _compat  # noqa: F401  (Lightning is installed)
from hpsearch.integrations.lightning.optim import LightningScheduler
from hpsearch.integrations.lightning.task import LightningTask

__all__ = ["LightningScheduler", "LightningTask"]
