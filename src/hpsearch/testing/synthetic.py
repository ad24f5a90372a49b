"""A synthetic study for trying the plot, the export and the status table without training.

    from hpsearch.testing import synthetic_study
    view = synthetic_study(200, seed=1)  # pruned, completed, failed+continued, running trials
    quick = synthetic_study(40, budget=6.0)  # the quickstart's shape: 6 warm-up + 6 epochs

Its trials have 4 params (lr, dropout, batch_size, weight_decay) and 8 reports each; a trial
that continues a crashed one carries the reports it shares with it, as a real retry does.

The tests and `benchmarks/plot_speed.py` use it; it is deterministic for a given seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import TYPE_CHECKING

import optuna

from hpsearch.lineage import CheckpointKind, CheckpointTree
from hpsearch.report.views import StudyView, TrialView
from hpsearch.search.records import PREFIX, set_study_attr

if TYPE_CHECKING:
    from hpsearch.config import Direction

BUDGET = 2.0  # epochs each trial trains after its fork
BASE = "warmup/step-600"  # the base checkpoint's id


def synthetic_study(
    n: int,
    *,
    seed: int = 0,
    direction: Direction = "maximize",
    classic: bool = False,
    budget: float = BUDGET,
) -> StudyView:
    """A study of n trials with random params, prunes, crashes with retries and running trials;
    a 6-epoch warm-up (none if `classic`), then `budget` epochs a trial."""
    rng = random.Random(seed)
    warm = 0.0 if classic else 6.0
    trials: list[TrialView] = []
    while len(trials) < n:
        trials += _next_trials(rng, len(trials), warm, classic, budget, room=n - len(trials))
    warmup_curve = () if classic else tuple((e / 2, 0.75 - 0.45 * 0.8**e) for e in range(1, 13))
    if direction == "minimize":  # turn accuracies into errors
        warmup_curve = tuple((p, 1 - v) for p, v in warmup_curve)
        trials = [
            replace(
                t,
                value=None if t.value is None else 1 - t.value,
                intermediate=tuple((p, 1 - v) for p, v in t.intermediate),
            )
            for t in trials
        ]
    return StudyView(
        name=f"synthetic-{n}",
        metric="val_accuracy" if direction == "maximize" else "val_error",
        direction=direction,
        classic=classic,
        samples_per_epoch=1797,
        warmup_progress=warm,
        warmup_steps=0 if classic else 600,
        warmup_curve=warmup_curve,
        base_checkpoint=None if classic else BASE,
        trials=tuple(trials),
    )


def _completed(
    rng: random.Random, number: int, warm: float, classic: bool, budget: float
) -> tuple[TrialView, list[tuple[float, float]]]:
    """Trial `number` as if it completed its budget, and its 8 (progress, accuracy) reports."""
    lr = 10 ** rng.uniform(-4, -1)
    quality = 0.97 - 0.08 * abs(math.log10(lr) + 2.5) - rng.uniform(0, 0.03)
    reports = [(warm + budget * (k + 1) / 8, quality - 0.2 * (1 - (k + 1) / 8)) for k in range(8)]
    params = {"lr": lr, "dropout": rng.uniform(0, 0.5), "batch_size": rng.choice([32, 64, 128])}
    params["weight_decay"] = 10 ** rng.uniform(-6, -1)
    trial = TrialView(
        number=number,
        state="COMPLETE",
        value=reports[-1][1],
        params=params,
        parent_checkpoint=None if classic else BASE,
        fork_step=None if classic else 600,
        fork_progress=warm,
        end_progress=warm + budget,
        steps_trained=200,
        samples_trained=2000,
        intermediate=tuple(reports),
        checkpoint_bytes=rng.randrange(10**5, 10**7),
        duration_s=rng.uniform(1, 10),
    )
    return trial, reports


def _next_trials(
    rng: random.Random, number: int, warm: float, classic: bool, budget: float, *, room: int
) -> list[TrialView]:
    """Trial `number`: pruned, completed or running, or (with `room` for two) a crash followed
    by the trial that continues it. Draws from `rng` in a fixed order, so a seed is one study."""
    complete, reports = _completed(rng, number, warm, classic, budget)
    roll = rng.random()
    if roll < 0.45:  # pruned at a random report
        k = rng.randrange(1, 7)
        end, value = reports[k]
        return [
            replace(
                complete,
                state="PRUNED",
                value=value,
                end_progress=end,
                pruned_at=end,
                intermediate=tuple(reports[: k + 1]),
            )
        ]
    if roll < 0.5 and room >= 2:  # crash, then a continuation
        # the crash comes after report k, the last checkpoint was at report k - 1: the retry
        # starts there, carries reports 0..k-1 from the attempt and recomputes report k on
        k = rng.randrange(1, 6)
        crashed = replace(
            complete,
            state="FAIL",
            value=None,
            end_progress=reports[k][0] + 0.05 * budget / BUDGET,
            intermediate=tuple(reports[: k + 1]),
            fail_reason="killed",
        )
        continued = replace(
            complete,
            number=number + 1,
            fork_progress=reports[k - 1][0],
            parent_checkpoint=f"t{number}/step-{k}",
            parent_trial=number,
            intermediate=tuple(reports),
            retry_of=number,
        )
        return [crashed, continued]
    if roll < 0.53:
        k = rng.randrange(0, 7)
        return [
            replace(
                complete,
                state="RUNNING",
                value=None,
                end_progress=reports[k][0],
                intermediate=tuple(reports[: k + 1]),
            )
        ]
    return [complete]


# -- a fork tree ----------------------------------------------------------------------------------

TREE_RUNGS = (1.0, 2.0, 4.0, 8.0)  # each generation's end, in epochs (1/8, 1/4, 1/2, 1 of 8)
TREE_EVAL = 0.25  # epochs between evaluations (reported at the global index, from scratch)
TREE_SAMPLES = 1600  # samples per epoch: a multiple of 1/TREE_EVAL, so indices map back exactly


def synthetic_tree(
    n_roots: int = 50,
    *,
    seed: int = 0,
    children: int = 4,
    keep: float = 0.25,
    rungs: tuple[float, ...] = TREE_RUNGS,
    direction: Direction = "maximize",
    crash: bool = True,
) -> StudyView:
    """A fork tree (mode "tree") as the `tree` strategy records it: `n_roots` roots trained
    from scratch to the first rung; at each rung the top `keep` of the generation's COMPLETE
    nodes survive and fork `children` children each (child 0 keeps its parent's lr, the others
    move it up to 8x either way); about a third of every generation is pruned inside it, and
    (with `crash`) one node a generation after the first crashes and a retry continues it.
    About `n_roots * len(rungs)` nodes with the defaults (50 roots: ~200). Deterministic."""
    rng = random.Random(seed)
    trials: list[TrialView] = []
    parents: list[tuple[TrialView | None, int]] = [(None, k) for k in range(n_roots)]
    for gen, end in enumerate(rungs):
        start = rungs[gen - 1] if gen else 0.0
        crashed = crash and gen > 0
        done: list[TrialView] = []
        for parent, slot in parents:
            lr = 10 ** rng.uniform(-4, -1) if parent is None else parent.params["lr"]
            if parent is not None and slot > 0:
                lr = min(0.3, lr * 2 ** rng.uniform(-3, 3))
            node = _tree_node(rng, len(trials), gen, start, end, lr, parent, slot)
            roll = rng.random()
            if roll < 0.35:
                trials.append(_pruned(rng, node))
            elif crashed:
                crashed = False
                trials += _crashed_and_retried(rng, node)
                done.append(trials[-1])
            else:
                trials.append(node)
                done.append(node)
        done.sort(key=lambda t: -(t.value or 0.0))
        survivors = done[: max(1, math.ceil(keep * len(parents)))]  # of the generation's size
        parents = [(s, k) for s in survivors for k in range(children)]
    if direction == "minimize":
        trials = [_as_error(t) for t in trials]
    return StudyView(
        name=f"synthetic-tree-{len(trials)}",
        metric="val_accuracy" if direction == "maximize" else "val_error",
        direction=direction,
        classic=False,
        samples_per_epoch=TREE_SAMPLES,
        warmup_progress=0.0,
        warmup_steps=0,
        trials=tuple(trials),
        tree=True,
    )


def _quality(lr: float, p: float, rng: random.Random) -> float:
    """Validation accuracy at `p` epochs of a run at `lr`: best near 3e-3, rising with p."""
    return (
        0.97 - 0.08 * abs(math.log10(lr) + 2.5) - 0.35 * math.exp(-p / 1.5) - rng.uniform(0, 0.01)
    )


def _tree_node(
    rng: random.Random,
    number: int,
    gen: int,
    start: float,
    end: float,
    lr: float,
    parent: TrialView | None,
    slot: int,
) -> TrialView:
    """A COMPLETE node that trained from `start` (its parent's end) to `end` at `lr`."""
    first = round(start / TREE_EVAL) + 1
    reports = tuple(
        (k * TREE_EVAL, _quality(lr, k * TREE_EVAL, rng))
        for k in range(first, round(end / TREE_EVAL) + 1)
    )
    samples = round((end - start) * TREE_SAMPLES)
    return TrialView(
        number=number,
        state="COMPLETE",
        value=reports[-1][1],
        params={"lr": lr},
        parent_checkpoint=None if parent is None else f"t{parent.number}-final",
        fork_step=None if parent is None else round(start * 25),
        fork_progress=start,
        end_progress=end,
        steps_trained=round((end - start) * 25),
        samples_trained=samples,
        intermediate=reports,
        final_checkpoint=f"t{number}-final",
        checkpoint_bytes=250_000,
        parent_trial=None if parent is None else parent.number,
        generation=gen,
        child=slot,  # a root's too: (0, None, k) is the k-th root's slot
    )


def _pruned(rng: random.Random, node: TrialView) -> TrialView:
    """`node` pruned at one of its reports before the last (its checkpoints deleted)."""
    k = rng.randrange(0, len(node.intermediate) - 1)
    at, value = node.intermediate[k]
    trained = at - node.fork_progress
    return replace(
        node, state="PRUNED", value=value, end_progress=at, pruned_at=at,
        intermediate=node.intermediate[: k + 1], final_checkpoint=None, checkpoint_bytes=0,
        steps_trained=round(trained * 25), samples_trained=round(trained * TREE_SAMPLES),
    )  # fmt: skip


def _crashed_and_retried(rng: random.Random, node: TrialView) -> list[TrialView]:
    """`node` crashing after report k (its last checkpoint at report k-1), then the retry that
    continues it there: same generation, parent and slot; it carries the attempt's reports."""
    k = rng.randrange(1, len(node.intermediate) - 1)
    at, crash_at = node.intermediate[k - 1][0], node.intermediate[k][0]
    end = node.end_progress or at
    attempt = replace(
        node, state="FAIL", value=None, end_progress=crash_at,
        intermediate=node.intermediate[: k + 1], fail_reason="killed", final_checkpoint=None,
        samples_trained=round((crash_at - node.fork_progress) * TREE_SAMPLES),
        steps_trained=round((crash_at - node.fork_progress) * 25),
    )  # fmt: skip
    retry = replace(
        node, number=node.number + 1, retry_of=node.number, fork_progress=at,
        fork_step=round(at * 25), parent_checkpoint=f"t{node.number}-ckpt",
        final_checkpoint=f"t{node.number + 1}-final",
        samples_trained=round((end - at) * TREE_SAMPLES), steps_trained=round((end - at) * 25),
    )  # fmt: skip
    return [attempt, retry]


def _as_error(t: TrialView) -> TrialView:
    return replace(
        t,
        value=None if t.value is None else 1 - t.value,
        intermediate=tuple((p, 1 - v) for p, v in t.intermediate),
    )


def write_tree_study(
    view: StudyView, study: optuna.Study, lineage: CheckpointTree, *, global_index: bool = True
) -> None:
    """Record `view` (a `synthetic_tree`) as the `tree` strategy would: an Optuna trial per node
    with its `hpsearch.*` attributes and its reports at the global evaluation index (counting
    from scratch; with `global_index=False` from the node's fork, a retry's from its first
    attempt's), the study's mode, and a checkpoint row per node (a finished node's final one, a
    crashed attempt's last; a pruned node's deleted)."""
    set_study_attr(study, "mode", "tree")
    set_study_attr(study, "samples_per_epoch", view.samples_per_epoch)
    lr = optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)
    by_number = {t.number: t for t in view.trials}
    frozen = []
    for t in view.trials:
        first = by_number.get(t.retry_of, t) if t.retry_of is not None else t
        origin = 0.0 if global_index else first.fork_progress
        attrs = {
            "generation": t.generation, "parent_trial": t.parent_trial, "child": t.child,
            "parent_checkpoint": _ckpt(study, t.parent_checkpoint), "fork_step": t.fork_step,
            "fork_samples": round(t.fork_progress * view.samples_per_epoch),
            "final_checkpoint": _ckpt(study, t.final_checkpoint), "retry_of": t.retry_of,
            "steps_trained": t.steps_trained, "samples_trained": t.samples_trained,
            "pruned_at": t.pruned_at, "fail_reason": t.fail_reason,
        }  # fmt: skip
        frozen.append(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState[t.state],
                value=t.value if t.state == "COMPLETE" else None,
                params=t.params,
                distributions={"lr": lr},
                intermediate_values={round((p - origin) / TREE_EVAL): v for p, v in t.intermediate},
                user_attrs={PREFIX + k: v for k, v in attrs.items() if v is not None},
            )
        )
        _add_checkpoint(lineage, t, view.samples_per_epoch, study.study_name)
    study.add_trials(frozen)


def _ckpt(study: optuna.Study, ckpt: str | None) -> str | None:
    """A checkpoint id of this study: ids are unique in the whole database."""
    return None if ckpt is None else f"{study.study_name}-{ckpt}"


def _add_checkpoint(lineage: CheckpointTree, t: TrialView, n: int, study: str) -> None:
    kind: CheckpointKind
    if t.state == "COMPLETE":
        ckpt, kind, epoch = f"{study}-t{t.number}-final", "final", t.end_progress or t.fork_progress
    else:
        ckpt, kind, epoch = f"{study}-t{t.number}-ckpt", "trial", t.fork_progress + 0.25
        if t.state == "FAIL":  # its last checkpoint: where its retry starts
            epoch = max(t.fork_progress, (t.end_progress or 0.0) - TREE_EVAL)
    lineage.add_pending(
        ckpt, trial=t.number, kind=kind, parent=None if t.parent_checkpoint is None
        else f"{study}-{t.parent_checkpoint}", step=round(epoch * 25),
        samples=round(epoch * n), epoch=epoch,
    )  # fmt: skip
    if t.state == "PRUNED":
        lineage.set_status(ckpt, "deleted")
    else:
        lineage.set_status(ckpt, "committed", nbytes=t.checkpoint_bytes)
