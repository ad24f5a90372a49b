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
  counts the batches this run trained before this one. `self.log` there is dropped.
- `Task.evaluate`: `on_validation_epoch_start`, `validation_step(batch, batch_idx)` for every
  batch, `on_validation_epoch_end`, with every `self.log` / `self.log_dict` collected and reduced
  over the epoch as Lightning does: `reduce_fx` mean (weighted by the batch size, given or
  inferred from the batch), sum, max or min; a torchmetrics `Metric` by `compute()`.

Not supported (refused or documented): manual optimization, several optimizers, a
`configure_optimizers` that reads `self.trainer`, Trainer flags (precision, clipping: use the
study file's settings), and Lightning callbacks.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset

from hpsearch.errors import TaskError
from hpsearch.task import Task

try:
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from lightning.pytorch.utilities.data import extract_batch_size
except ImportError:  # the older package name, same code
    try:
        from lightning_fabric.utilities.apply_func import move_data_to_device
        from pytorch_lightning.utilities.data import extract_batch_size
    except ImportError as exc:
        raise ImportError(
            "hpsearch.integrations.lightning needs Lightning: pip install 'hpsearch[lightning]'"
        ) from exc

__all__ = ["LightningScheduler", "LightningTask"]

_REDUCE = {"mean": "mean", "sum": "sum", "max": "max", "min": "min"}
_REDUCE_FNS = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}


class LightningTask(Task):
    """An hpsearch Task running a LightningModule (`module`) on a LightningDataModule
    (`datamodule`); set both as class attributes of a subclass. See the module docstring."""

    module: ClassVar[Callable[..., Any]]
    datamodule: ClassVar[Callable[[], Any]]

    def __init__(self) -> None:
        self._collate: Callable[[Any], Any] | None = None
        self._train_len = 0
        self._pending: dict[int, Any] = {}  # id(optimizer) -> its scheduler config
        self._batches = 0

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

    # -- model, optimizer, scheduler ---------------------------------------------------------

    def model(self, hparams: dict[str, Any]) -> torch.nn.Module:
        cls = _attr(self, "module", "a LightningModule class")
        model = cls(**_init_kwargs(cls, hparams))
        if not getattr(model, "automatic_optimization", True):
            raise TaskError(
                f"{_name(cls)} sets automatic_optimization = False: manual optimization is not "
                "supported (hpsearch's loop calls backward and step); use automatic optimization"
            )
        return model

    def optimizer(self, model: torch.nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        module: Any = model  # a LightningModule: its hooks are no torch.nn.Module attributes
        optimizer, config = _split(module.configure_optimizers(), type(model).__name__)
        self._pending[id(optimizer)] = config
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
        if not self._train_len:  # built before the data (a check): an epoch needs its length
            self.datasets()
        per_epoch = max(1, math.ceil(self._train_len / int(hparams["batch_size"])))
        period = frequency if interval == "step" else frequency * per_epoch
        return LightningScheduler(sched, period)

    # -- training and evaluation -------------------------------------------------------------

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        module: Any = model
        with _logging_into(model, None):
            out = module.training_step(batch, self._batches)
        self._batches += 1
        if isinstance(out, dict):
            out = out.get("loss")
        if not isinstance(out, torch.Tensor):
            raise TaskError(
                f"{type(model).__name__}.training_step returned {type(out).__name__}: hpsearch "
                "needs the loss (a tensor, or a dict with 'loss') for every batch"
            )
        return out

    def evaluate(self, model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
        logged = _Logged()
        device = next(model.parameters(), torch.empty(0)).device
        module: Any = model
        with _logging_into(model, logged):
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

    # -- the batch counter, saved with the run (Task.state_dict) ------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"batch_idx": self._batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._batches = int(state.get("batch_idx", 0))


class LightningScheduler:
    """A torch LR scheduler stepped once every `period` of hpsearch's once-per-step calls, as
    Lightning steps one configured with `interval`/`frequency`. The count is in its state, so a
    resumed run steps it at the very same optimizer steps."""

    def __init__(self, scheduler: Any, period: int) -> None:
        self.scheduler = scheduler
        self.period = period
        self.calls = 0

    def step(self) -> None:
        self.calls += 1
        if self.calls % self.period == 0:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "period": self.period,
                "calls": self.calls}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.period, self.calls = int(state["period"]), int(state["calls"])

    def get_last_lr(self) -> list[float]:
        return list(self.scheduler.get_last_lr())

    # a fork of `lr` moves the scheduler's base LRs (hpsearch.training.fork): the inner ones
    @property
    def base_lrs(self) -> list[float]:
        return self.scheduler.base_lrs

    @property
    def _last_lr(self) -> list[float]:
        return self.scheduler._last_lr

    @_last_lr.setter
    def _last_lr(self, value: list[float]) -> None:
        self.scheduler._last_lr = value


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


def _split(out: Any, model: str) -> tuple[torch.optim.Optimizer, dict[str, Any] | None]:
    """The optimizer and the scheduler config of any single-optimizer `configure_optimizers`."""
    scheds: list[Any] = []
    if isinstance(out, dict):
        opts, sched = [out.get("optimizer")], out.get("lr_scheduler")
        scheds = [sched] if sched is not None else []
    elif isinstance(out, list | tuple) and len(out) == 2 and _both_lists(out):
        opts, scheds = list(out[0]), list(out[1])
    elif isinstance(out, list | tuple):
        opts = list(out)
    else:
        opts = [out]
    if len(opts) != 1 or not isinstance(opts[0], torch.optim.Optimizer) or len(scheds) > 1:
        raise TaskError(
            f"{model}.configure_optimizers must return one optimizer (alone, in a list, as "
            "([opt], [sched]) or as {'optimizer': opt, 'lr_scheduler': ...}) and at most one "
            f"scheduler; got {_describe(out)}"
        )
    if not scheds:
        return opts[0], None
    config = scheds[0] if isinstance(scheds[0], dict) else {"scheduler": scheds[0]}
    if "scheduler" not in config:
        raise TaskError(f"{model}.configure_optimizers: an lr_scheduler dict needs 'scheduler'")
    return opts[0], config


def _both_lists(out: Sequence[Any]) -> bool:
    return all(isinstance(x, list | tuple) for x in out)


def _describe(out: Any) -> str:
    if isinstance(out, dict):
        return "a dict with keys " + ", ".join(map(str, out))
    if isinstance(out, list | tuple):
        return f"a {type(out).__name__} of {len(out)}"
    return type(out).__name__


_LOG_PARAMS = ("prog_bar", "logger", "on_step", "on_epoch", "reduce_fx", "enable_graph",
               "sync_dist", "sync_dist_group", "add_dataloader_idx", "batch_size")  # fmt: skip


class _Logged:
    """`self.log` calls of one validation epoch, reduced at its end as Lightning reduces them."""

    def __init__(self) -> None:
        self.batch: Any = None
        self.values: dict[str, tuple[str, list[tuple[float, int]], Any]] = {}

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        opts = dict(zip(_LOG_PARAMS, args, strict=False)) | kwargs
        on_step, on_epoch = opts.get("on_step"), opts.get("on_epoch")
        if on_epoch is False:
            how = "last"  # a step-only value: the last one is what callback_metrics holds
        else:
            fx = opts.get("reduce_fx", "mean")
            found = _REDUCE.get(fx) if isinstance(fx, str) else _REDUCE_FNS.get(fx)
            if found is None:
                raise TaskError(f"self.log({name!r}): reduce_fx {fx!r} is not supported")
            how = found
        key = f"{name}_epoch" if on_step and on_epoch is not False else name
        if hasattr(value, "compute") and hasattr(value, "reset"):  # a torchmetrics Metric
            self.values[key] = ("metric", [], value)
            return
        size = opts.get("batch_size") or (extract_batch_size(self.batch) if self.batch else 1)
        entry = self.values.setdefault(key, (how, [], None))
        entry[1].append((_scalar(name, value), int(size)))

    def log_dict(self, dictionary: Any, *args: Any, **kwargs: Any) -> None:
        for k, v in dictionary.items():
            self.log(k, v, *args, **kwargs)

    def reduce(self) -> dict[str, float]:
        out = {}
        for key, (how, seen, metric) in self.values.items():
            if metric is not None:
                out[key] = _scalar(key, metric.compute())
                metric.reset()
            elif how == "mean":
                out[key] = sum(v * n for v, n in seen) / sum(n for _, n in seen)
            else:
                values = [v for v, _ in seen]
                picks: dict[str, Callable[[list[float]], float]] = {
                    "sum": sum, "max": max, "min": min, "last": lambda x: x[-1],
                }  # fmt: skip
                out[key] = float(picks[how](values))
        return out


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TaskError(f"self.log({name!r}): the value must be a scalar, got {value.shape}")
        return float(value.detach())
    return float(value)


@contextlib.contextmanager
def _logging_into(model: torch.nn.Module, logged: _Logged | None) -> Iterator[None]:
    """`model.log` / `model.log_dict` go to `logged` (None: dropped) while the block runs; the
    module's class is untouched, and the instance gets its own methods back after."""
    sink = logged or _Logged()
    object.__setattr__(model, "log", sink.log if logged else _drop)
    object.__setattr__(model, "log_dict", sink.log_dict if logged else _drop)
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            model.__dict__.pop(name, None)


def _drop(*args: Any, **kwargs: Any) -> None:
    """`self.log` in training_step: hpsearch records the evaluation's metrics only."""
