"""Which failed trials a worker continues (retries), and which trials are finished for good."""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from hpsearch.search.records import trial_attr


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that a later trial continues."""
    return {n for n in (trial_attr(t, "retry_of") for t in trials) if n is not None}


def retryable(
    t: FrozenTrial, trials: Sequence[FrozenTrial], retried: set[int], retries: int
) -> bool:
    """A trial that failed on an error (not OOM, divergence or an unusable checkpoint), is not
    continued yet, and whose chain of retries is shorter than `trials.retries`."""
    if t.state != TrialState.FAIL or t.number in retried:
        return False
    if trial_attr(t, "fail_kind") != "error":
        return False
    if trial_attr(t, "retry_of") is None:
        return retries > 0  # the first of its chain (no index of every trial for it)
    depth, by_number = 0, {x.number: x for x in trials}
    cur = t
    while trial_attr(cur, "retry_of") is not None:
        depth += 1
        cur = by_number[trial_attr(cur, "retry_of")]
    return depth < retries


def settled(t: FrozenTrial, trials: Sequence[FrozenTrial], retried: set[int], retries: int) -> bool:
    """Finished for good: complete, pruned, or failed with no continuation to come."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if t.state == TrialState.FAIL:
        # a failed attempt that was continued counts through its continuation
        return t.number not in retried and not retryable(t, trials, retried, retries)
    return False
