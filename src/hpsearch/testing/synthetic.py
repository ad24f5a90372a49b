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

from hpsearch.report.views import StudyView, TrialView

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
