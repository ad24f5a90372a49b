"""Build the read model (`StudyView`) of a study from the Optuna study and the checkpoint tree.

`status`, `tree`, `plot`, `export` and `best` read only what runs wrote; nothing here trains or
writes. From Python::

    view = hpsearch.load("studies/quickstart.yaml")
    df = view.dataframe()
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from optuna.trial import FrozenTrial, TrialState

from hpsearch.lineage import WARMUP, CheckpointRow
from hpsearch.report.tree import tree_text
from hpsearch.report.views import StudyView, TrialStateName, TrialView
from hpsearch.search.records import EVALUATION_KEYS, TrialRecord, trial_attr
from hpsearch.search.scheduler.registry import strategy
from hpsearch.search.session import Session
from hpsearch.search.tree_nodes import Slot, TreeNodes, check_nodes


def study_view(session: Session) -> StudyView:
    """Everything `plot`, `export` and `status` show, as plain data."""
    n = int(session.attr("samples_per_epoch", 0) or 0) or session.samples_per_epoch()
    rows = session.lineage.checkpoints()
    by_trial: dict[int, list[CheckpointRow]] = {}
    for r in rows:
        by_trial.setdefault(r.trial, []).append(r)
    frozen = session.study.get_trials(deepcopy=False)
    owner = {r.id: r.trial for r in rows}
    tree = strategy(session).nodes
    nodes = check_nodes(frozen, session.settings.tree) if tree else TreeNodes()
    origins = _segment_origins(frozen)
    units = {t.number: _unit(t, session, n) for t in frozen}
    if tree and _global_indices(frozen, origins, units):  # reports count from scratch
        origins = dict.fromkeys(origins, 0)
    trials = tuple(
        _trial_view(
            t,
            session,
            by_trial.get(t.number, []),
            n,
            (origins[t.number], units[t.number]),
            owner,
            nodes.slots.get(t.number),
        )
        for t in frozen
    )
    curve = tuple((float(x), float(y)) for x, y in session.attr("warmup_curve", []) or [])
    warm_samples = int(session.attr("warmup_samples", 0) or 0)
    disk = sum(r.nbytes for r in rows if r.status == "committed")
    return StudyView(
        name=session.study_name,
        metric=session.settings.objective.metric,
        direction=session.settings.objective.direction,
        classic=session.classic,
        samples_per_epoch=n,
        warmup_progress=0.0 if session.classic else warm_samples / n,
        warmup_steps=int(session.attr("warmup_steps", 0) or 0),
        warmup_curve=curve,
        base_checkpoint=session.attr("base_checkpoint"),
        trials=trials,
        disk_bytes=disk,
        tree=tree,
        damaged=dict(nodes.damaged),
    )


def _segment_origins(trials: list[FrozenTrial]) -> dict[int, int]:
    """Where each trial's training segment began, in samples: its fork, or for a retry the fork
    of the first attempt it continues. A retry restores its attempt's trainer, so its evaluation
    indices (and the reports it copies from the attempt) count from there, not from its own
    start; placed from its own start, its curve ran past the end of its budget."""
    records = {t.number: TrialRecord.of(t) for t in trials}
    origins: dict[int, int] = {}
    for number, rec in records.items():
        seen = {number}
        while rec.retry_of is not None and rec.retry_of in records and rec.retry_of not in seen:
            seen.add(rec.retry_of)
            rec = records[rec.retry_of]
        origins[number] = rec.fork_samples or 0
    return origins


def _trial_view(
    t: FrozenTrial,
    session: Session,
    mine: list[CheckpointRow],
    n: int,
    placing: tuple[int, int],
    owner: dict[str, int],
    slot: Slot | None = None,
) -> TrialView:
    """One trial from its Optuna record and its checkpoints (`mine`); `n` samples per epoch,
    `placing` where its evaluation indices count from and the samples between two (both in
    samples), `owner` the trial of every checkpoint id, `slot` its checked place in a fork
    tree (None: not a valid node)."""
    rec = TrialRecord.of(t)
    live = [r for r in mine if r.status == "committed"]
    fork_samples = rec.fork_samples
    fork_progress = fork_samples / n if fork_samples is not None else 0.0
    steps, samples = rec.steps_trained, rec.samples_trained
    if t.state == TrialState.RUNNING:
        attempts = session.lineage.attempts(t.number)
        steps = sum(a.steps for a in attempts)
        samples = sum(a.samples for a in attempts)
    duration = started = ended = None
    if t.datetime_start is not None:
        started = t.datetime_start.timestamp()
        ended = t.datetime_complete.timestamp() if t.datetime_complete else None
        duration = (ended if ended is not None else time.time()) - started
    final = rec.final_checkpoint
    kept = final if any(r.id == final for r in live) else None
    # GC marks the trial (final_checkpoint_deleted); a study older than the mark says it too
    deleted = final if final is not None and not kept else None
    return TrialView(
        number=t.number,
        # Optuna's TrialState has exactly these five members
        state=cast(TrialStateName, t.state.name),
        value=t.value if t.state == TrialState.COMPLETE else _last(t),
        params=dict(t.params),
        parent_checkpoint=rec.parent_checkpoint,
        fork_step=rec.fork_step,
        fork_progress=fork_progress,
        end_progress=(end := _end_progress(t, mine, fork_progress, samples, n)),
        steps_trained=steps,
        samples_trained=samples,
        # intermediate values are keyed by evaluation index; place them by the samples seen
        intermediate=_intermediate(t, placing[1], placing[0], n, end),
        pruned_at=rec.pruned_at,
        retry_of=rec.retry_of,
        final_checkpoint=kept,
        checkpoint_bytes=sum(r.nbytes for r in live),
        duration_s=duration,
        start_unix_s=started,
        end_unix_s=ended,
        fail_reason=rec.fail_reason,
        # a tree records its parent (a retry's too: its node's); else whose checkpoint it is
        parent_trial=slot[1] if slot is not None else _parent_trial(rec.parent_checkpoint, owner),
        generation=slot[0] if slot is not None else None,
        child=slot[2] if slot is not None else None,
        final_checkpoint_deleted=deleted,
        metrics=_last_metrics(rec.evaluations),
        evaluations=rec.evaluations,
    )


def _last_metrics(evaluations: tuple[dict[str, Any], ...]) -> dict[str, float]:
    if not evaluations:
        return {}
    return {k: float(v) for k, v in evaluations[-1].items() if k not in EVALUATION_KEYS}


def _parent_trial(parent: str | None, owner: dict[str, int]) -> int | None:
    trial = owner.get(parent) if parent is not None else None
    return None if trial is None or trial == WARMUP else trial


def _last(t: Any) -> float | None:
    """A pruned trial's value is its last reported one (as Optuna records it)."""
    if t.value is not None:
        return t.value
    if t.intermediate_values:
        return t.intermediate_values[max(t.intermediate_values)]
    return None


def _end_progress(
    t: Any, rows: list[CheckpointRow], fork: float, samples: int, n: int
) -> float | None:
    pruned_at = trial_attr(t, "pruned_at")
    if t.state == TrialState.PRUNED and pruned_at is not None:
        return float(pruned_at)
    reached = [r.epoch for r in rows if r.status in ("committed", "deleted", "deleting")]
    ends = [*reached, fork + samples / n if samples else fork]
    return max(ends) if ends else None


def _unit(t: Any, session: Session, n: int) -> int:
    """Samples between two evaluations of trial `t`."""
    every = session.settings.trials
    if every.eval_every is not None:
        return round(every.eval_every * n)
    # step-based evaluation: place by the trial's batch size
    assert every.eval_every_steps is not None  # TrialSettings holds exactly one of the two
    bs = int(t.params.get("batch_size", session.settings.warmup.hparams["batch_size"]))
    return every.eval_every_steps * bs


def _intermediate(
    t: Any, unit: int, origin: int, n: int, end: float | None
) -> tuple[tuple[float, float], ...]:
    """The reports at (origin + index * unit) / n epochs."""
    points = [((origin + k * unit) / n, float(v)) for k, v in sorted(t.intermediate_values.items())]
    return final_at_end(points, end, unit / n)


def final_at_end(
    points: list[tuple[float, float]], end: float | None, interval: float
) -> tuple[tuple[float, float], ...]:
    """`points` with the last one at `end` when it lies less than an `interval` past it: the
    final evaluation comes at the end of the segment, which index * a rounded eval_every * n
    can overshoot; past the trial's end, the plot dropped the trial's final value."""
    if end is None or not points or not end < points[-1][0] <= end + interval:
        return tuple(points)
    if len(points) == 1 or points[-2][0] < end:
        points = [*points[:-1], (end, points[-1][1])]
    return tuple(points)


def _global_indices(
    trials: list[FrozenTrial], origins: dict[int, int], units: dict[int, int]
) -> bool:
    """Do a tree's nodes report at the global evaluation index (counting from scratch, the
    tree's contract: each generation then has indices of its own for the pruner) rather than
    from their fork? Then every forked node's first report lies after its fork point; counted
    from the fork, a node's first index is a handful, and it would lie at or before it. One
    node that does not fit says the study counts from the fork."""
    forked = [t for t in trials if origins[t.number] > 0 and t.intermediate_values]
    return all(min(t.intermediate_values) * units[t.number] > origins[t.number] for t in forked)


# -- the tree as text -----------------------------------------------------------------------------


def format_tree(session: Session, *, show_all: bool = False) -> str:
    """The checkpoint tree as indented text (see `hpsearch.report.tree`); deleted checkpoints
    only with `show_all`."""
    frozen = session.study.get_trials(deepcopy=False)
    trials = {t.number: (t.state.name, t.value) for t in frozen}
    nodes = None
    if strategy(session).nodes:
        checked = check_nodes(frozen, session.settings.tree).slots
        nodes = {number: (slot[0], slot[1]) for number, slot in checked.items()}
    return tree_text(
        session.study_name, session.lineage.checkpoints(), trials, show_all=show_all, nodes=nodes
    )


@dataclass
class StudyHandle:
    """What `hpsearch.load` returns: the study's read model and table for Python users."""

    session: Session

    def view(self) -> StudyView:
        return study_view(self.session)

    def dataframe(self) -> Any:
        from hpsearch.report.export import trials_dataframe

        return trials_dataframe(self.view())

    def best(self) -> TrialView | None:
        return self.view().best()


def load(study_file: str, *, storage: str | None = None, classic: bool = False) -> StudyHandle:
    """Open an existing study for reading: `hpsearch.load("studies/x.yaml").dataframe()`."""
    return StudyHandle(Session.open(study_file, storage=storage, classic=classic, create=False))
