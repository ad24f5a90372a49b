"""The settings a study file becomes: frozen dataclasses, with a `Literal` for every closed choice.

The mappings they hold (`WarmupSettings.hparams`, `StudySettings.search_space`,
`ComponentSettings.kwargs`) are plain dicts so that the settings pickle into worker processes;
treat them as read-only and use `warmup_hparams` / `trial_hparams` for copies you may change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

__all__ = [
    "COMPRESSIONS",
    "DIRECTIONS",
    "PARAM_KINDS",
    "PRECISIONS",
    "SCHEDULE_NAMES",
    "STRATEGIES",
    "WANDB_MODES",
    "CheckpointSettings",
    "ComponentSettings",
    "Compression",
    "DataSettings",
    "Direction",
    "LoggerSettings",
    "Objective",
    "Param",
    "ParamKind",
    "Precision",
    "ScheduleName",
    "ScheduleSettings",
    "Strategy",
    "StudySettings",
    "TrainingSettings",
    "TreeSettings",
    "TrialSettings",
    "WandbSettings",
    "WarmupSettings",
]

Direction = Literal["minimize", "maximize"]
Compression = Literal["none", "zstd"]
ScheduleName = Literal["cosine", "linear", "constant", "wsd"]
# tree: generations forked from searched roots; base: every trial forks from one warm-up's end;
# (classic, every trial from scratch, is the `--no-fork` twin of either, not a file setting)
Strategy = Literal["tree", "base"]
ParamKind = Literal["float", "int", "categorical"]
Precision = Literal["fp32", "bf16", "fp16"]

# The choices a study file may write, in the order messages list them: read off the Literals, so
# the type and the check cannot disagree.
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)
COMPRESSIONS: tuple[Compression, ...] = get_args(Compression)
SCHEDULE_NAMES: tuple[ScheduleName, ...] = get_args(ScheduleName)
PARAM_KINDS: tuple[ParamKind, ...] = get_args(ParamKind)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


@dataclass(frozen=True)
class Objective:
    """The metric `Task.evaluate` returns that Optuna optimizes."""

    metric: str
    direction: Direction


@dataclass(frozen=True)
class CheckpointSettings:
    """Where and how often checkpoints are written; exactly one of `every`/`every_steps` is set."""

    dir: str  # an absolute local path, or an fsspec URL ("s3://bucket/prefix") kept as written
    every: float | None  # epochs between checkpoints
    every_steps: int | None  # optimizer steps between checkpoints
    keep_best: int
    compression: Compression
    async_save: bool  # the YAML key `async`
    # fsspec options for a URL `dir` (s3: endpoint_url, key, secret, ...), passed as they are.
    # Never printed (credentials) and no part of the study's fingerprint.
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    cache_dir: str | None = None  # local read-through cache of a remote store; None: off
    cache_max_bytes: int = 20 << 30


@dataclass(frozen=True)
class WarmupSettings:
    """The shared warm-up of a `warmup:` study (strategy `base`); exactly one of
    `epochs`/`steps` is set. A fork tree has no warm-up: the reader fills `hparams` with the
    tree's fixed values and a start point of the search space (what the study is checked on
    before anything trains), with a budget of 0 epochs."""

    epochs: float | None
    steps: int | None
    hparams: dict[str, Any]  # read-only; always holds lr (float) and batch_size (int)


@dataclass(frozen=True)
class TrialSettings:
    """A trial's budget -- after its fork from the base in a `warmup:` study, from scratch
    to the last rung (a full run) in a fork tree -- the search's budget in full runs, and the
    evaluation points; exactly one of `epochs`/`steps` and one of
    `eval_every`/`eval_every_steps` is set."""

    n: int
    epochs: float | None
    steps: int | None
    eval_every: float | None  # epochs between evaluations reported to the pruner
    eval_every_steps: int | None
    retries: int  # how many times a trial that crashed on an error is continued
    heartbeat_s: float
    grace_s: float
    max_failures: int = 3  # trials of one run that fail for good (errors) before the run stops
    # full runs from scratch to spend, every trial, pruned one, probe and warm-up counted (a full
    # run: `epochs`/`steps` of a tree, warm-up plus trial otherwise); None: `n` trials, no budget
    budget: float | None = None
    # processes (ranks) that train each trial together, data-parallel (hpsearch.training.ranks),
    # and how long a rank waits for the others before it gives the trial up
    processes: int = 1
    rank_timeout_s: float = 300.0


@dataclass(frozen=True)
class DataSettings:
    """Data loading."""

    num_workers: int


@dataclass(frozen=True)
class Param:
    """One search-space entry. Ranges have `low`, `high`, `log`, `step`; categoricals `choices`."""

    name: str
    kind: ParamKind
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None  # None for a continuous float range; >= 1 for int
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class ScheduleSettings:
    """The LR schedule as a fraction of the whole run (warm-up + trial budget)."""

    name: ScheduleName
    warmup: float  # fraction of the run spent ramping up, in [0, 1)
    final: float  # final LR as a fraction of the base LR, in [0, 1]
    decay: float = 0.0  # wsd: the last fraction of the run, in (0, 1], decays to `final`


Promotion = Literal["async", "sync"]
PROMOTIONS: tuple[Promotion, ...] = ("async", "sync")


@dataclass(frozen=True)
class TreeSettings:
    """The fork tree: generation 0 is `roots` short runs from scratch; at each rung the best
    `keep` fraction of a generation survives and each survivor is forked into `children`.
    `promotion`: "async" forks a node as soon as it ranks in the best `keep` of the nodes of its
    generation settled so far (`search/scheduler/tree_async.py`); "sync" waits for the whole
    generation (`tree_plan.py`)."""

    roots: int
    rungs: tuple[float, ...]  # increasing fractions of the full budget, the last 1.0
    keep: float  # in (0, 1]
    children: int
    probe: float  # a cooldown probe's length as a fraction of the full budget; 0: off
    hparams: dict[str, Any]  # read-only: values of the keys the search space does not sample
    sized: bool = False  # `roots` came from the budget (`trials.budget`), not from the file
    promotion: Promotion = "async"


@dataclass(frozen=True)
class ComponentSettings:
    """An Optuna sampler or pruner: a class name in its module and keyword arguments (read-only)."""

    name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class TrainingSettings:
    """The loop's escape hatches (the `training:` section); the defaults are the plain loop.

    At most one of `clip_norm`/`clip_value` is set. `accumulate_samples` (None: off) is the
    number of samples per optimizer step, a multiple of every batch size the run can have."""

    clip_norm: float | None = None  # clip the gradients' total L2 norm to this
    clip_value: float | None = None  # clip each gradient element to [-v, v]
    accumulate_samples: int | None = None
    precision: Precision = "fp32"  # autocast dtype of the forward pass; fp16 adds a GradScaler


WandbMode = Literal["online", "offline", "disabled"]
WANDB_MODES: tuple[WandbMode, ...] = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbSettings:
    """`loggers.wandb`: one Weights & Biases run per trial, in `project`, grouped by study."""

    project: str
    entity: str | None = None  # the W&B team or user; None: the API key's default entity
    mode: WandbMode | None = None  # None: W&B's own (WANDB_MODE, else online)
    dir: str = ""  # an absolute directory W&B writes its files under (in <dir>/wandb)


@dataclass(frozen=True)
class LoggerSettings:
    """Where every trial's evaluations and hyperparameters are logged besides Optuna; None: off."""

    tensorboard: str | None = None  # an absolute directory: one run per trial below it
    mlflow: str | None = None  # an MLflow tracking URI; the experiment is the study's name
    wandb: WandbSettings | None = None


@dataclass(frozen=True)
class StudySettings:
    """A validated study file. Paths are absolute strings; URLs are kept as written."""

    path: str  # the study file as given
    base_dir: str  # its directory (absolute): relative paths in the file are resolved against it
    run_dir: str  # <base_dir>/runs/<name>
    name: str
    task: str  # "package.module:Class" or "/absolute/path/file.py:Class"
    seed: int
    device: str  # "cpu", "cuda" or "cuda:N": N is open-ended, so no Literal
    objective: Objective
    storage: str
    checkpoints: CheckpointSettings
    warmup: WarmupSettings
    trials: TrialSettings
    data: DataSettings
    search_space: dict[str, Param]  # read-only, in file order
    schedule: ScheduleSettings | None
    sampler: ComponentSettings
    pruner: ComponentSettings  # `pruner: null` is stored as NopPruner
    # the reader sets it: a file with `warmup:` is a base study, any other a fork tree (the
    # study file's default); this default pairs with `tree=None` for settings made by hand
    strategy: Strategy = "base"
    tree: TreeSettings | None = None  # set for strategy `tree`
    training: TrainingSettings = field(default_factory=TrainingSettings)  # the plain loop
    loggers: LoggerSettings = field(default_factory=LoggerSettings)
    # with device `cuda`: the GPUs (as this process sees them) that `--workers` spreads over
    gpus: tuple[int, ...] | None = None
