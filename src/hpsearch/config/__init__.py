"""The study file: its schema, the reader that checks it, the search space, the forkable keys and
the Optuna components it names. Nothing here imports torch when imported: `hpsearch status` and
friends read study files without paying for it.

    schema      the frozen settings dataclasses and the Literals of their closed choices
    reader      load_study_file: the YAML (no aliases), then each section in order
    values      the Reader of one raw value, and how a message shows it
    sections    name, task, device, objective, warmup, trials, data, schedule
    hatches     training: the loop's clipping, accumulation and precision
    places      storage and checkpoints: resolved and probed for writing
    space       search_space, suggest, warmup/trial hparams, check_budgets
    components  sampler and pruner: read, dry-run, make_sampler/make_pruner
    forkable    the forkable-key registry (its check is hpsearch.training.forkcheck)
    taskload    load_task: the user's Task class (imports torch)
"""

from hpsearch.config.components import make_pruner, make_sampler
from hpsearch.config.forkable import (
    DROPOUT_KEY,
    FORK_KEYS,
    FORKABLE,
    GROUP_KEYS,
    ForkKind,
)
from hpsearch.config.reader import load_study_file
from hpsearch.config.schema import (
    CheckpointSettings,
    ComponentSettings,
    Compression,
    DataSettings,
    Direction,
    LoggerSettings,
    Objective,
    Param,
    ParamKind,
    ScheduleName,
    ScheduleSettings,
    Strategy,
    StudySettings,
    TrainingSettings,
    TreeSettings,
    TrialSettings,
    WandbSettings,
    WarmupSettings,
)
from hpsearch.config.space import (
    check_budgets,
    invalid_values,
    suggest,
    trial_hparams,
    warmup_hparams,
)
from hpsearch.config.tree import generation_sizes, survivors_of

__all__ = [
    "DROPOUT_KEY",
    "FORKABLE",
    "FORK_KEYS",
    "GROUP_KEYS",
    "CheckpointSettings",
    "ComponentSettings",
    "Compression",
    "DataSettings",
    "Direction",
    "ForkKind",
    "LoggerSettings",
    "Objective",
    "Param",
    "ParamKind",
    "ScheduleName",
    "ScheduleSettings",
    "Strategy",
    "StudySettings",
    "TrainingSettings",
    "TreeSettings",
    "TrialSettings",
    "WandbSettings",
    "WarmupSettings",
    "check_budgets",
    "generation_sizes",
    "invalid_values",
    "load_study_file",
    "make_pruner",
    "make_sampler",
    "suggest",
    "survivors_of",
    "trial_hparams",
    "warmup_hparams",
]
