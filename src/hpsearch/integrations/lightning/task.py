"""`LightningTask`: the hpsearch Task that runs a LightningModule and its LightningDataModule
(see the package's docstring for what it does and does not support)."""

from __future__ import annotations

import inspect
import math
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset

from hpsearch.errors import TaskError
from hpsearch.integrations.lightning import modstate
from hpsearch.integrations.lightning._compat import (
    LightningModule,
    extract_batch_size,
    move_data_to_device,
)
from hpsearch.integrations.lightning.logs import Logged, TrainLogged, logging_into
from hpsearch.integrations.lightning.optim import LightningScheduler, split
from hpsearch.task import Task

# the hooks of Lightning's automatic optimization that run around the optimizer's step: a
# module that overrides one gets its optimizer's step wrapped (see LightningTask._wrap_step)
_STEP_HOOKS = ("optimizer_step", "on_before_optimizer_step", "on_train_batch_end",
               "on_before_zero_grad")  # fmt: skip


class LightningTask(Task):
    """An hpsearch Task running a LightningModule (`module`) on a LightningDataModule
    (`datamodule`); set both as class attributes of a subclass. See the package docstring."""

    module: ClassVar[Callable[..., Any]]
    datamodule: ClassVar[Callable[[], Any]]

    def __init__(self) -> None:
        self._collate: Callable[[Any], Any] | None = None
        self._train_len = 0
        self._pending: dict[int, Any] = {}  # id(optimizer) -> its scheduler config
        self._new_run(None)

    def _new_run(self, module: torch.nn.Module | None) -> None:
        """A new model is a new run: what Lightning's Trainer counts for one starts again (a
        restore then loads the saved counts, `load_state_dict`). hpsearch runs one trainer at a
        time per task object, so the module built last is the one training."""
        self._module = module
        self._optimizer: torch.optim.Optimizer | None = None
        self._batches = 0  # training_step's batch_idx
        self._samples: int | None = 0  # samples trained on (None: a batch of unknown size)
        self._train_logged = TrainLogged()
        self._last: tuple[Any, Any, int, int] | None = None  # outputs, batch, batch_idx, epoch
        self._in_step = False

    # -- data --------------------------------------------------------------------------------

    def datasets(self) -> tuple[Dataset, Dataset]:
        dm = _attr(self, "datamodule", "a LightningDataModule class")()
        dm.prepare_data()
        dm.setup("fit")
        train = _loader(dm, "train_dataloader")
        val = _loader(dm, "val_dataloader")
        self._collate = train.collate_fn
        self._train_len = len(train.dataset)  # type: ignore[arg-type]
        if val.batch_size:
            self.eval_batch_size = val.batch_size
        return train.dataset, val.dataset

    def collate(self, samples: Sequence[Any]) -> Any:
        if self._collate is None:
            return super().collate(samples)
        return self._collate(list(samples))

    def _epoch_length(self) -> int:
        if not self._train_len:  # a trainer given its datasets: this object read none
            self.datasets()
        return self._train_len

    # -- model, optimizer, scheduler ---------------------------------------------------------

    def model(self, hparams: dict[str, Any]) -> torch.nn.Module:
        cls = _attr(self, "module", "a LightningModule class")
        model = cls(**_init_kwargs(cls, hparams))
        if not getattr(model, "automatic_optimization", True):
            raise TaskError(
                f"{_name(cls)} sets automatic_optimization = False: manual optimization is not "
                "supported (hpsearch's loop calls backward and step); use automatic optimization"
            )
        self._new_run(model)
        return model

    def optimizer(self, model: torch.nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        module: Any = model  # a LightningModule: its hooks are no torch.nn.Module attributes
        optimizer, config = split(module.configure_optimizers(), type(model).__name__)
        self._pending[id(optimizer)] = config
        self._optimizer = optimizer
        if any(_overrides(model, hook) for hook in _STEP_HOOKS):
            self._wrap_step(model, optimizer)
        return optimizer

    def scheduler(
        self, optimizer: torch.optim.Optimizer, hparams: dict[str, Any], total_steps: int
    ) -> Any | None:
        config = self._pending.pop(id(optimizer), None)
        if config is None:
            return None
        sched = config["scheduler"]
        interval, frequency = config.get("interval", "epoch"), int(config.get("frequency", 1))
        if interval not in ("step", "epoch") or frequency < 1:
            raise TaskError(
                f"lr_scheduler: interval must be 'step' or 'epoch' and frequency >= 1, got "
                f"interval={interval!r} frequency={frequency}"
            )
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return sched  # hpsearch steps it with the objective at each evaluation
        if interval == "step" and frequency == 1:
            return sched  # exactly hpsearch's own stepping
        per_epoch = max(1, math.ceil(self._epoch_length() / int(hparams["batch_size"])))
        period = frequency if interval == "step" else frequency * per_epoch
        return LightningScheduler(sched, period)

    def _wrap_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's step runs the module's hooks around it, in Lightning's order:
        on_before_optimizer_step, optimizer_step (the module's own, if it has one, given a
        closure that returns the loss: hpsearch's loop has run training_step and backward
        already) and on_train_batch_end. A bound method on this optimizer object only, so
        torch's LR schedulers wrap it as they wrap any step."""
        real = type(optimizer).step
        own = _overrides(model, "optimizer_step")
        module: Any = model
        task = self

        def step(opt: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
            if task._in_step:  # the module's optimizer_step stepping the optimizer
                return real(opt, closure)
            out, batch, batch_idx, epoch = task._last or (None, None, task._batches, 0)
            result = None
            with logging_into(model, task._train_logged):
                module.on_before_optimizer_step(opt)
                if own:
                    task._in_step = True
                    try:
                        module.optimizer_step(epoch, batch_idx, opt, lambda: _loss_of(out))
                    finally:
                        task._in_step = False
                else:
                    result = real(opt, closure)
                module.on_train_batch_end(out, batch, batch_idx)
            return result

        optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]

    # -- training and evaluation -------------------------------------------------------------

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        module: Any = model
        n = self._epoch_length()
        with logging_into(model, self._train_logged):
            if self._samples is not None and self._samples % n == 0:
                # the first batch of an epoch: the last one ends here (so after its
                # evaluation, as in Lightning), and a run resumed at the boundary ends it too
                if self._samples:
                    self._end_epoch(module)
                module.on_train_epoch_start()
            epoch = self._samples // n if self._samples is not None else 0
            if module.on_train_batch_start(batch, self._batches) == -1:
                raise TaskError(
                    f"{type(model).__name__}.on_train_batch_start returned -1 (skip the rest of "
                    "the epoch): not supported, hpsearch's data order is a function of the step"
                )
            out = module.training_step(batch, self._batches)
            if _overrides(model, "on_before_zero_grad") and self._first_micro_batch():
                module.on_before_zero_grad(self._optimizer)
        loss = out.get("loss") if isinstance(out, dict) else out
        if not isinstance(loss, torch.Tensor):
            raise TaskError(
                f"{type(model).__name__}.training_step returned {type(out).__name__}: hpsearch "
                "needs the loss (a tensor, or a dict with 'loss') for every batch"
            )
        self._last = (_outputs(out), batch, self._batches, epoch)
        self._batches += 1
        size = _batch_size(batch)
        self._samples = None if self._samples is None or size is None else self._samples + size
        return loss

    def _end_epoch(self, module: Any) -> None:
        module.on_train_epoch_end()
        for metric in self._train_logged.metrics:  # Lightning resets what training logged
            metric.reset()
        self._train_logged.metrics.clear()

    def _first_micro_batch(self) -> bool:
        """Whether no gradient is there yet (the loop zeroes them before each optimizer step):
        Lightning calls on_before_zero_grad once per step, on its first micro-batch."""
        opt = self._optimizer
        groups = opt.param_groups if opt is not None else []
        return all(p.grad is None for g in groups for p in g["params"])

    def evaluate(self, model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
        logged = Logged()
        device = next(model.parameters(), torch.empty(0)).device
        module: Any = model
        with logging_into(model, logged):
            module.on_validation_epoch_start()
            for i, batch in enumerate(loader):
                logged.batch = batch = move_data_to_device(batch, device)
                module.validation_step(batch, i)
            logged.batch = None
            module.on_validation_epoch_end()
        if not logged.values:
            raise TaskError(
                f"{type(model).__name__}.validation_step logged no metric: log the study's "
                "objective with self.log(name, value)"
            )
        return logged.reduce()

    # -- what Lightning's Trainer would keep, saved with the run (Task.state_dict) ------------

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"batch_idx": self._batches, "samples": self._samples}
        if self._module is not None:
            paths = {id(m): p for p, m in modstate.metrics(self._module).items()}
            logged = [paths[id(m)] for m in self._train_logged.metrics if id(m) in paths]
            out |= {"train_logged": logged, **modstate.extra_state(self._module)}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._batches = int(state.get("batch_idx", 0))
        samples = state.get("samples")  # None in a checkpoint of an older hpsearch
        self._samples = None if samples is None else int(samples)
        self._last = None
        if self._module is not None:
            modstate.load_extra_state(self._module, state)
            found = modstate.metrics(self._module)
            logged = state.get("train_logged", [])
            self._train_logged.metrics = [found[p] for p in logged if p in found]


# -- helpers ---------------------------------------------------------------------------------


def _attr(task: LightningTask, name: str, what: str) -> Callable[..., Any]:
    # read off the class: a lambda or function set as the attribute stays unbound
    value = getattr(type(task), name, None)
    if value is None:
        raise TaskError(
            f"{type(task).__name__} sets no `{name}`: write `{name} = ...` ({what}) in the class"
        )
    return value


def _name(cls: Any) -> str:
    return getattr(cls, "__name__", repr(cls))


def _overrides(model: torch.nn.Module, hook: str) -> bool:
    return getattr(type(model), hook, None) is not getattr(LightningModule, hook, None)


def _init_kwargs(cls: Any, hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters `cls.__init__` names (every one if it takes **kwargs)."""
    params = list(inspect.signature(cls).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(hparams)
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [p.name for p in named if p.default is p.empty and p.name not in hparams]
    if missing:
        raise TaskError(
            f"{_name(cls)}.__init__ needs {', '.join(missing)}: add them to warmup.hparams "
            f"(hpsearch passes {_name(cls)} the hyperparameters its __init__ names)"
        )
    return {p.name: hparams[p.name] for p in named if p.name in hparams}


def _loader(dm: Any, method: str) -> DataLoader:
    try:
        loader = getattr(dm, method)()
    except NotImplementedError:
        loader = None
    except Exception as exc:  # Lightning's MisconfigurationException for a missing hook
        if "must be implemented" not in str(exc):
            raise
        loader = None
    if not isinstance(loader, DataLoader):
        raise TaskError(
            f"{type(dm).__name__}.{method}() must return one DataLoader (hpsearch takes its "
            f"dataset and collate_fn), got {type(loader).__name__}"
        )
    return loader


def _batch_size(batch: Any) -> int | None:
    """The batch's number of samples, as Lightning infers it (None: it cannot)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's note on an ambiguous collection
            return int(extract_batch_size(batch))
    except Exception:  # a batch without a tensor to read it from
        return None


def _outputs(out: Any) -> Any:
    """training_step's output as on_train_batch_end receives it: the loss detached."""
    if isinstance(out, dict):
        return {**out, "loss": out["loss"].detach()}
    return {"loss": out.detach()}


def _loss_of(outputs: Any) -> Any:
    return outputs["loss"] if isinstance(outputs, dict) else None
