"""What every logger shares: how a trial ended, the logger's interface, and the names they use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hpsearch.search.records import EVALUATION_KEYS, TrialKey

# the trial's facts that become tags (MLflow, W&B), config (W&B) or HParams (TensorBoard)
LINEAGE_KEYS: tuple[TrialKey, ...] = (
    "parent_trial",
    "parent_checkpoint",
    "fork_step",
    "generation",
    "retry_of",
)


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended, for the loggers."""

    study: str
    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    hparams: Mapping[str, Any]
    lineage: Mapping[str, Any]  # LINEAGE_KEYS that are recorded (not None)
    evaluations: Sequence[Mapping[str, Any]]  # {step, samples, index, <metric>: value ...}


class TrialLogger(Protocol):
    """One trial's logger. `name` says which logger it is (and where it writes) in the warning
    that switches it off; each call returns within the loggers' bound or is abandoned."""

    name: str

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        """One evaluation as it happens (`step`: the optimizer step)."""

    def end(self, info: TrialEnd) -> None:
        """The trial is over: write what is left and release everything."""

    def close(self) -> None:
        """The attempt stops but the trial goes on (a stop, a takeover): flush and release."""


def run_name(number: int) -> str:
    return f"trial-{number:05d}"


def metrics_of(evaluation: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in evaluation.items() if k not in EVALUATION_KEYS}
