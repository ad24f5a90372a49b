"""What a run reports: one line per finished trial and the study's summary."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from hpsearch.console import human_bytes, human_time
from hpsearch.search.records import trial_attr
from hpsearch.search.session import Session

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
    spent_samples: int = 0  # every trial's training, and a single fork's warm-up, each once
    full_samples: int = 0  # one full run from scratch, the budget's unit
    budget: float | None = None  # trials.budget, in full runs


def summarize(
    session: Session, seconds: float, *, ran: int = 0, target: int = 0, study_seconds: float = 0.0
) -> Summary:
    study = session.study
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = None
    if done:
        pick = max if session.settings.objective.direction == "maximize" else min
        best = pick(done, key=lambda t: float(t.value or 0.0))  # `done` has values
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
    samples = int(session.attr("warmup_samples", 0) or 0) if not session.classic else 0
    samples += sum(int(trial_attr(t, "samples_trained", 0) or 0) for t in trials)
    n = int(session.attr("samples_per_epoch", 0) or 0)
    full = _full_samples(session, n)
    return Summary(
        session.study_name, finished, states,
        best.number if best else None, best.value if best else None,
        dict(best.params) if best else {},
        trial_attr(best, "final_checkpoint") if best else None,
        steps_run, scratch, disk, seconds, max(study_seconds, seconds), ran, target,
        samples, full, session.settings.trials.budget,
    )  # fmt: skip


def _full_samples(session: Session, n: int) -> int:
    """One full run in samples (0: unknown: a budget in steps, or no epoch size recorded)."""
    s = session.settings
    w = s.warmup.epochs if s.warmup.epochs is not None else None
    t = s.trials.epochs
    if w is None or t is None or not n:
        return 0
    return round(w * n) + round(t * n)


def format_summary(s: Summary, session_dir: str) -> str:
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(s.states.items()))
    if s.ran == 0 and s.finished >= s.target > 0:
        lines = [
            f"study {s.study}: nothing to do: it has {s.finished} finished trials ({states}) "
            f"of {s.target}; `--trials N` asks for more"
        ]
    else:
        lines = [
            f"study {s.study}: {s.finished} finished trials ({states}); {s.ran} in this run, "
            f"{human_time(s.seconds)} (the study: {human_time(s.study_seconds)} in all)"
        ]
    if s.budget is not None and s.full_samples:
        lines.append(
            f"spent: {s.spent_samples / s.full_samples:.2f} of the budget's {s.budget:g} full "
            f"runs ({s.spent_samples} training samples, every trial, probe and warm-up once)"
        )
    if s.best_number is not None:
        params = " ".join(f"{k}={_fmt(v)}" for k, v in s.best_params.items())
        lines.append(f"best: trial {s.best_number}, value {s.best_value:.6g}, {params}")
        if s.best_checkpoint:
            lines.append(f"best checkpoint: {session_dir}/{s.best_checkpoint}")
    ratio = s.scratch_steps / s.steps_run if s.steps_run else float("nan")
    if s.scratch_steps != s.steps_run:
        lines.append(
            f"training steps: {s.steps_run} (from scratch these trials take {s.scratch_steps}: "
            f"{ratio:.2f}x; a real --no-fork search: benchmarks/RESULTS.md)"
        )
    else:
        lines.append(f"training steps: {s.steps_run}")
    lines.append(f"disk in use: {human_bytes(s.disk_bytes)}")
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
