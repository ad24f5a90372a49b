"""The study file: its schema, the reader that checks it, the search space and the Optuna
components it names. Nothing here imports torch: `hpsearch status` and friends read study files
without paying for it."""

from hpsearch.config.components import (
    FORKABLE,
    CheckpointSettings,
    ComponentSettings,
    DataSettings,
    Objective,
    Param,
    ScheduleSettings,
    StudySettings,
    TrialSettings,
    WarmupSettings,
    check_budgets,
    check_forkable,
    load_study_file,
    make_pruner,
    make_sampler,
    suggest,
    trial_hparams,
    warmup_hparams,
)

__all__ = [
    "FORKABLE",
    "CheckpointSettings",
    "ComponentSettings",
    "DataSettings",
    "Objective",
    "Param",
    "ScheduleSettings",
    "StudySettings",
    "TrialSettings",
    "WarmupSettings",
    "check_budgets",
    "check_forkable",
    "load_study_file",
    "make_pruner",
    "make_sampler",
    "suggest",
    "trial_hparams",
    "warmup_hparams",
]
