"""What hpsearch records on Optuna's study and trials, in one place.

Every fact lives in a user attribute named `hpsearch.<key>`, so `optuna.load_study`, the dashboard
and pandas see it. The keys are `Literal`s: a misspelt key is a type error, not a silent `None`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial

from hpsearch.search.optuna_bridge import set_user_attrs

PREFIX = "hpsearch."  # of every user attribute hpsearch sets on studies and trials

StudyKey = Literal[
    "mode",  # tree | fork | classic
    "samples_per_epoch",
    "preflight_ok",  # the objective metric was found among evaluate()'s metrics once
    "fingerprint",  # the settings the base checkpoint depends on
    "base_checkpoint",  # the warm-up's end, which fork-from-base trials start from
    "warmup_curve",  # [(epoch, objective)] of the warm-up
    "warmup_steps",
    "warmup_samples",
    "wall_s",  # the wall time of every run of the study together
]

TrialKey = Literal[
    "retry_of",  # the failed trial this one continues
    "parent_checkpoint",  # where the trial's own segment started (None: from scratch)
    "fork_step",
    "fork_samples",
    "final_checkpoint",
    # set once GC deleted the final checkpoint (why); final_checkpoint keeps the id it had
    "final_checkpoint_deleted",
    # every evaluation of the trial's own segment, [{step, samples, index, <metric>...}], written
    # once at the end of each attempt (the checkpoints hold them in between)
    "evaluations",
    "steps_trained",  # the trial's own training, summed over its attempts
    "samples_trained",
    "pruned_at",  # epoch
    "fail_kind",  # error | oom | start | fork | checkpoint | diverged | invalid | unplaced
    "fail_reason",
    "fail_log",  # the per-trial log that keeps every failed attempt's traceback
    # checkpoints the trial could not start from (damaged, missing, unfit): [{checkpoint, why}]
    "fallbacks",
    "threads",  # torch's intra-op threads its training ran with (a replay uses as many)
    # the fork tree (strategy `tree`): every node is an ordinary Optuna trial
    "generation",  # 0 for a root (trained from scratch), g for a child forked at rung g-1's end
    "parent_trial",  # the trial whose final checkpoint this one forked from (None: a root)
    "child",  # its slot among its parent's children (0: continues with the parent's params)
    # the objective after the cooldown probe the node is ranked on for survival (its value
    # stays the evaluation of its own model, which its final checkpoint holds)
    "probe_value",
]

Mode = Literal["tree", "fork", "classic"]

# the `fail_kind`s of trials that ended FAIL without running: enqueued by hand with values the
# search space cannot hold, or where a fork tree had no place for them. They count towards no
# target (a study of n trials still trains n).
NEVER_RAN = ("invalid", "unplaced")

# the keys of an `evaluations` record beside the metrics evaluate() returned
EVALUATION_KEYS = ("step", "samples", "index")


def study_attr(study: optuna.Study, key: StudyKey, default: Any = None) -> Any:
    return study.user_attrs.get(PREFIX + key, default)


def set_study_attr(study: optuna.Study, key: StudyKey, value: Any) -> None:
    study.set_user_attr(PREFIX + key, value)


def trial_attr(trial: FrozenTrial, key: TrialKey, default: Any = None) -> Any:
    return trial.user_attrs.get(PREFIX + key, default)


def set_trial_attrs(trial: optuna.Trial, **values: Any) -> None:
    """Set several `hpsearch.*` attributes of a running trial, in one transaction; the names
    are checked."""
    for key in values:
        if key not in _TRIAL_KEYS:
            raise KeyError(f"not an hpsearch trial attribute: {key!r}")
    set_user_attrs(trial, {PREFIX + key: value for key, value in values.items()})


_TRIAL_KEYS = frozenset(TrialKey.__args__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TrialRecord:
    """The `hpsearch.*` facts of one trial, typed."""

    number: int
    retry_of: int | None
    parent_checkpoint: str | None
    fork_step: int | None
    fork_samples: int | None
    final_checkpoint: str | None
    steps_trained: int
    samples_trained: int
    pruned_at: float | None
    fail_kind: str | None
    fail_reason: str | None
    generation: int | None = None
    parent_trial: int | None = None
    final_checkpoint_deleted: str | None = None
    evaluations: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, t: FrozenTrial) -> TrialRecord:
        def get(key: TrialKey) -> Any:
            return trial_attr(t, key)

        return cls(
            t.number, get("retry_of"), get("parent_checkpoint"), get("fork_step"),
            get("fork_samples"), get("final_checkpoint"), int(get("steps_trained") or 0),
            int(get("samples_trained") or 0), get("pruned_at"), get("fail_kind"),
            get("fail_reason"), get("generation"), get("parent_trial"),
            get("final_checkpoint_deleted"), tuple(get("evaluations") or ()),
        )  # fmt: skip
