"""Read models of a finished or running study: what `plot`, `export` and `status` show.

They are plain data, built from the Optuna study and the tree by `hpsearch.report.status`,
so the renderers never touch a database and can be tested on synthetic studies.
Training progress is measured in epochs of the training set (samples / len(train set)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from hpsearch.config import Direction

# The names of Optuna's trial states, as the views carry them.
TrialStateName = Literal["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]


@dataclass(frozen=True)
class TrialView:
    """One Optuna trial as hpsearch sees it.

    `fork_progress` is where the trial branched off (the warm-up's end for a forked trial, the
    parent attempt's last checkpoint for a continuation, 0 in classic mode); `end_progress` is
    where it stopped (finished, pruned, failed, or its latest checkpoint while running).
    `intermediate` holds (progress, objective) pairs as reported to the pruner; `evaluations`
    every metric `evaluate()` returned.
    """

    number: int
    state: TrialStateName
    value: float | None
    params: dict[str, Any]
    parent_checkpoint: str | None
    fork_step: int | None
    fork_progress: float
    end_progress: float | None
    steps_trained: int
    samples_trained: int
    intermediate: tuple[tuple[float, float], ...] = ()
    pruned_at: float | None = None  # progress at which the pruner stopped it
    retry_of: int | None = None  # the trial number this one continues after a crash
    final_checkpoint: str | None = None
    checkpoint_bytes: int = 0
    duration_s: float | None = None
    # when it started and ended (None while it runs), in seconds since the Unix epoch: trials
    # of several workers overlap, so the study's progress over time needs both
    start_unix_s: float | None = None
    end_unix_s: float | None = None
    fail_reason: str | None = None
    parent_trial: int | None = None  # whose checkpoint it started from (None: warm-up, none)
    # the fork tree (a study of mode "tree"): a retry has the generation, parent and slot of
    # the node it continues; `parent_trial` is then the node's tree parent, not the attempt
    generation: int | None = None  # 0: a root trained from scratch
    child: int | None = None  # its slot among its parent's children (0: continues its params)
    final_checkpoint_deleted: str | None = None  # its final checkpoint, which GC deleted
    # every metric of its last evaluation, and of every evaluation of its own segment
    # ({step, samples, index, <metric>: value}); empty until an attempt of it has ended
    metrics: dict[str, float] = field(default_factory=dict)
    evaluations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class StudyView:
    """A study: its settings that matter to readers, the warm-up trunk and every trial."""

    name: str
    metric: str
    direction: Direction
    classic: bool  # trials trained from scratch (--no-fork)
    samples_per_epoch: int
    warmup_progress: float  # where the trunk ends (0 in classic mode)
    warmup_steps: int
    warmup_curve: tuple[tuple[float, float], ...] = ()  # (progress, objective) during warm-up
    base_checkpoint: str | None = None
    trials: tuple[TrialView, ...] = field(default_factory=tuple)
    disk_bytes: int = 0
    tree: bool = False  # a fork tree (mode "tree"): every trial is a node with a generation
    # a tree's nodes whose recorded place is invalid (-> why): shown without a place, no winner
    damaged: dict[int, str] = field(default_factory=dict)

    def best(self) -> TrialView | None:
        """The study's winner (`hpsearch.search.winner`: the COMPLETE trial with the best
        value, of equal values the lowest number; a tree's damaged nodes left out), or None."""
        from hpsearch.search.winner import pick

        done = [(t.number, t.value) for t in self.trials
                if t.state == "COMPLETE" and t.number not in self.damaged]  # fmt: skip
        number = pick(done, self.direction)
        return next((t for t in self.trials if t.number == number), None)

    def lineage(self, number: int) -> tuple[int, ...]:
        """The trial numbers from the root of `number`'s lineage down to it, by `parent_trial`
        (in a fork tree: the chain of forks that made it; a loop in bad data stops it)."""
        by_number = {t.number: t for t in self.trials}
        path = [number]
        parent = by_number[number].parent_trial if number in by_number else None
        while parent is not None and parent in by_number and parent not in path:
            path.append(parent)
            parent = by_number[parent].parent_trial
        return tuple(reversed(path))
