"""What a run reports: one line per finished trial and the study's summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch.console import human_bytes, human_time
from hpsearch.search.budgets import Budgets
from hpsearch.search.records import trial_attr
from hpsearch.search.retries import retried_numbers, settled
from hpsearch.search.scheduler.registry import strategy
from hpsearch.search.session import Session
from hpsearch.search.winner import winner

if TYPE_CHECKING:
    from hpsearch.search.jobs import Outcome


@dataclass
class Summary:
    study: str
    finished: int
    states: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_checkpoint: str | None
    steps_run: int  # warm-up (once) + every trial's own steps, this study in total
    scratch_steps: int  # what a from-scratch search of the same trials would have trained
    disk_bytes: int
    seconds: float  # this run
    study_seconds: float  # every run of the study together
    ran: int  # trials that finished during this run (by any worker)
    target: int
    spent_samples: int = 0  # every sample the study trained, once: warm-up, trials, probes
    full_samples: int = 0  # one full run from scratch, the budget's unit (0: unknown)
    budget: float | None = None  # trials.budget, in full runs
    # trials that failed for good (not continued by a retry), but for divergence, which is a
    # search outcome: "#n kind: reason" each; a run that leaves any exits 1
    failed: list[str] = field(default_factory=list)
    # how to ask for more once the study is done: a tree's size is its budget's
    more: str = "`--trials N` (or a larger --budget) asks for more"


def summarize(
    session: Session, seconds: float, *, ran: int = 0, target: int = 0, study_seconds: float = 0.0
) -> Summary:
    study = session.study
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = winner(session)
    warm = int(session.attr("warmup_steps", 0) or 0)
    own = sum(int(trial_attr(t, "steps_trained", 0)) for t in trials)
    counted = [t for t in trials if trial_attr(t, "retry_of") is None]
    if session.classic:
        steps_run, scratch = own, own
    else:
        steps_run = warm + own
        scratch = own + warm * len([t for t in counted if t.state != TrialState.WAITING])
    # the tree's rows hold every size: no read of the store (one GET per checkpoint on S3)
    disk = sum(r.nbytes for r in session.lineage.checkpoints(statuses=("committed",)))
    finished = sum(states.get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
    samples = sum(int(trial_attr(t, "samples_trained", 0) or 0) for t in trials)
    if not session.classic:
        samples += int(session.attr("warmup_samples", 0) or 0)
    n = int(session.attr("samples_per_epoch", 0) or 0)
    full = Budgets.of(session, n).classic_budget().samples or 0 if n else 0
    out = Summary(
        session.study_name, finished, states,
        best.number if best else None, best.value if best else None,
        dict(best.params) if best else {},
        trial_attr(best, "final_checkpoint") if best else None,
        steps_run, scratch, disk, seconds, max(study_seconds, seconds), ran, target,
        samples, full, session.settings.trials.budget, failed_for_good(session, trials),
    )  # fmt: skip
    if strategy(session).sized:
        out.more = "a larger tree is a new study: a new `name` and a larger trials.budget"
    return out


def failed_for_good(session: Session, trials: list[FrozenTrial]) -> list[str]:
    """The trials that failed and that no retry continues, as "#n kind: reason (log)" lines;
    a diverged trial is the search's outcome (its values do not train), not a failure."""
    retried, retries = retried_numbers(trials), session.settings.trials.retries
    out = []
    for t in trials:
        kind = trial_attr(t, "fail_kind") or "error"
        if (
            t.state != TrialState.FAIL
            or kind == "diverged"
            or not settled(t, trials, retried, retries)
        ):
            continue
        reason = " ".join(str(trial_attr(t, "fail_reason") or "no reason recorded").split())
        log = trial_attr(t, "fail_log")
        out.append(f"#{t.number} {kind}: {reason[:160]}" + (f" (traceback: {log})" if log else ""))
    return out


def format_summary(s: Summary, session_dir: str) -> str:
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(s.states.items()))
    if s.ran == 0 and s.finished >= s.target > 0:
        lines = [
            f"study {s.study}: nothing to do: it has {s.finished} finished trials ({states}) "
            f"of {s.target}; {s.more}"
        ]
    else:
        lines = [
            f"study {s.study}: {s.finished} finished trials ({states}); {s.ran} in this run, "
            f"{human_time(s.seconds)} (the study: {human_time(s.study_seconds)} in all)"
        ]
    if s.best_number is not None:
        params = " ".join(f"{k}={_fmt(v)}" for k, v in s.best_params.items())
        lines.append(f"best: trial {s.best_number}, value {s.best_value:.6g}, {params}")
        if s.best_checkpoint:
            lines.append(f"best checkpoint: {session_dir}/{s.best_checkpoint}")
    if s.full_samples:
        runs = s.spent_samples / s.full_samples
        of = f"{runs:.2f} of the budget's {s.budget:g}" if s.budget is not None else f"{runs:.2f}"
        lines.append(
            f"spent: {of} full runs ({s.spent_samples} training samples, every trial, probe "
            f"and warm-up once; a full run: {s.full_samples} samples from scratch)"
        )
    ratio = s.scratch_steps / s.steps_run if s.steps_run else float("nan")
    if s.scratch_steps != s.steps_run:
        lines.append(
            f"training steps: {s.steps_run} (from scratch these trials take {s.scratch_steps}: "
            f"{ratio:.2f}x; a real --no-fork search: benchmarks/RESULTS.md)"
        )
    else:
        lines.append(f"training steps: {s.steps_run}")
    lines.append(f"disk in use: {human_bytes(s.disk_bytes)}")
    if s.failed:
        lines.append(f"{len(s.failed)} trial(s) failed for good:")
        lines += [f"  {line}" for line in s.failed[:20]]
        if len(s.failed) > 20:
            lines.append(f"  ... and {len(s.failed) - 20} more (`hpsearch status` lists them)")
    return "\n".join(lines)


def outcome_line(o: Outcome, metric: str) -> str:
    value = "-" if o.value is None or math.isnan(o.value) else f"{o.value:.4g}"
    params = " ".join(f"{k}={_fmt(v)}" for k, v in o.params.items())
    note = f"  ({o.note})" if o.note else ""
    return (
        f"trial {o.number:>4} {o.state:<8} {metric}={value:<8} {params}  "
        f"steps={o.steps} {human_time(o.seconds)}{note}"
    )


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
