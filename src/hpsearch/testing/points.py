"""Kill a real run at a named point of hpsearch's own paths (`hpsearch.failpoints`), and check
what a fork tree must hold after any such kill.

    from hpsearch.testing.points import kill_at_point, tree_start_problems
    proc = kill_at_point(["hpsearch", "run", "study.yaml"], "node.sampled", 5)
    # then run the command to the end; tree_start_problems(study.get_trials()) == []

`hpsearch.testing.faults` kills a run after events it can see from outside (a commit, a save, a
report, a deletion). A node's start passes points nothing outside can see in time (its trial is
enqueued, asked, sampled, its attempt registered, its fork restored: a few milliseconds apart),
so the run kills itself there: exactly there, on any machine, however loaded.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from hpsearch.failpoints import ENV, POINTS

PREFIX = "hpsearch."


def kill_at_point(
    cmd: list[str],
    point: str,
    n: int,
    *,
    env: dict[str, str] | None = None,
    log: str | None = None,
    timeout_s: float = 600.0,
) -> subprocess.CompletedProcess[bytes]:
    """Run `cmd` until it kills itself the `n`th time it passes `point`; raise RuntimeError if
    it ended otherwise (it finished first, or failed). Its output is appended to `log`.
    `timeout_s` is only a safety net against a run that hangs."""
    if point not in POINTS:
        raise ValueError(f"{point!r} is not one of {POINTS}")
    run_env = {**(os.environ if env is None else env), ENV: f"{point}={n}"}
    with open(log or os.devnull, "ab") as out:
        proc = subprocess.run(cmd, env=run_env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout_s, check=False)  # fmt: skip
    if proc.returncode != -signal.SIGKILL:
        raise RuntimeError(
            f"{' '.join(cmd)} ended with {proc.returncode} before passing {point} {n} times"
        )
    return proc


def tree_start_problems(trials: Sequence[FrozenTrial]) -> list[str]:
    """What breaks "a tree node's parent is always its slot's parent" in a grown tree: a node
    that did not start at its parent's final checkpoint (`parent_checkpoint`, `fork_samples`),
    or a root that did not start from scratch; one line per problem."""

    def attr(t: FrozenTrial, key: str) -> object:
        return t.user_attrs.get(PREFIX + key)

    by_number = {t.number: t for t in trials}
    out = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or attr(t, "retry_of"):
            continue  # a retry's record starts at the attempt it continues
        parent = attr(t, "parent_trial")
        if parent is None:
            if attr(t, "parent_checkpoint") is not None or attr(t, "fork_samples") != 0:
                out.append(f"root {t.number} did not start from scratch")
            continue
        p = by_number.get(parent)  # type: ignore[call-overload]
        if p is None:
            out.append(f"node {t.number}: its parent trial {parent} is missing")
            continue
        final = attr(p, "final_checkpoint")
        if attr(t, "parent_checkpoint") != final or not final:
            out.append(f"node {t.number} did not start at trial {parent}'s final checkpoint "
                       f"({attr(t, 'parent_checkpoint')!r}, not {final!r})")  # fmt: skip
        evaluations = attr(p, "evaluations") or []
        end = evaluations[-1]["samples"] if evaluations else None  # type: ignore[index]
        if attr(t, "fork_samples") != end:
            out.append(f"node {t.number} forked at sample {attr(t, 'fork_samples')!r}, its "
                       f"parent {parent} ended at {end!r}")  # fmt: skip
    return out
