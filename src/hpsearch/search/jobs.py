"""A job is one trial a worker runs: the Optuna trial, where it starts, and its hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import optuna

JobKind = Literal["new", "takeover", "retry"]
OutcomeState = Literal["COMPLETE", "PRUNED", "FAIL", "LOST"]


@dataclass
class Job:
    number: int
    trial_id: int
    hparams: dict[str, Any]
    kind: JobKind
    token: str
    retry_of: int | None = None
    sources: list[str] = field(default_factory=list)  # its own checkpoints, newest first
    parent: str | None = None  # where its segment starts when no source is usable (None: scratch)
    generation: int | None = None  # its generation in a fork tree (None: not a tree)
    until: int | None = None  # a tree node: the sample where its segment ends (its rung)
    total: int | None = None  # a tree node: the samples its schedule spans (the full budget)
    probe: int = 0  # samples of the cooldown probe it is ranked on (0: none)
    # why its parent cannot be had (a tree node whose parent's final is gone): without a usable
    # checkpoint of its own it fails saying so, never starting elsewhere
    no_parent: str = ""
    # the handle a new trial was asked and sampled through in this process: its copy of the
    # trial is current, so running it reads nothing back from the storage (None: open one)
    handle: optuna.Trial | None = field(default=None, repr=False, compare=False)


class Wait:
    """The scheduler has nothing to start until running trials finish (a tree's generation
    settling); the worker looks again shortly, taking over trials whose workers died."""


WAIT = Wait()


@dataclass
class Outcome:
    number: int
    state: OutcomeState
    value: float | None
    params: dict[str, Any]
    steps: int
    seconds: float
    note: str = ""
