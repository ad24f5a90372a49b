"""A synthetic study for trying the plot, the export and the status table without training.

    from hpsearch.testing import synthetic_study
    view = synthetic_study(200, seed=1)  # pruned, completed, failed+continued, running trials

The tests and `benchmarks/plot_speed.py` use it; it is deterministic for a given seed.
"""

from __future__ import annotations

import math
import random

from hpsearch.report.views import StudyView, TrialView


def synthetic_study(
    n: int, *, seed: int = 0, direction: str = "maximize", classic: bool = False
) -> StudyView:
    """A study of n trials with random params, prunes, crashes with retries and running trials."""
    rng = random.Random(seed)
    warm = 0.0 if classic else 6.0
    budget = 2.0
    trials: list[TrialView] = []
    number = 0
    while len(trials) < n:
        lr = 10 ** rng.uniform(-4, -1)
        quality = 0.97 - 0.08 * abs(math.log10(lr) + 2.5) - rng.uniform(0, 0.03)
        reports = [
            (warm + budget * (k + 1) / 8, quality - 0.2 * (1 - (k + 1) / 8)) for k in range(8)
        ]
        params = {"lr": lr, "dropout": rng.uniform(0, 0.5), "batch_size": rng.choice([32, 64, 128])}
        common = {
            "params": params,
            "parent_checkpoint": None if classic else "warmup/step-600",
            "fork_step": None if classic else 600,
            "fork_progress": warm,
            "steps_trained": 200,
            "samples_trained": 2000,
            "checkpoint_bytes": rng.randrange(10**5, 10**7),
            "duration_s": rng.uniform(1, 10),
        }
        roll = rng.random()
        if roll < 0.45:  # pruned at a random report
            k = rng.randrange(1, 7)
            end = reports[k][0]
            trials.append(
                TrialView(
                    number,
                    "PRUNED",
                    reports[k][1],
                    end_progress=end,
                    pruned_at=end,
                    intermediate=tuple(reports[: k + 1]),
                    **common,
                )
            )
        elif roll < 0.5 and len(trials) + 2 <= n:  # crash, then a continuation
            k = rng.randrange(1, 6)
            trials.append(
                TrialView(
                    number,
                    "FAIL",
                    None,
                    end_progress=reports[k][0] + 0.05,
                    intermediate=tuple(reports[: k + 1]),
                    fail_reason="killed",
                    **common,
                )
            )
            common |= {"fork_progress": reports[k][0], "parent_checkpoint": f"t{number}/last"}
            number += 1
            trials.append(
                TrialView(
                    number,
                    "COMPLETE",
                    reports[-1][1],
                    end_progress=warm + budget,
                    intermediate=tuple(reports[k + 1 :]),
                    retry_of=number - 1,
                    **common,
                )
            )
        elif roll < 0.53:
            k = rng.randrange(0, 7)
            trials.append(
                TrialView(
                    number,
                    "RUNNING",
                    None,
                    end_progress=reports[k][0],
                    intermediate=tuple(reports[: k + 1]),
                    **common,
                )
            )
        else:
            trials.append(
                TrialView(
                    number,
                    "COMPLETE",
                    reports[-1][1],
                    end_progress=warm + budget,
                    intermediate=tuple(reports),
                    **common,
                )
            )
        number += 1
    warmup_curve = () if classic else tuple((e / 2, 0.75 - 0.45 * 0.8**e) for e in range(1, 13))
    if direction == "minimize":  # turn accuracies into errors
        warmup_curve = tuple((p, 1 - v) for p, v in warmup_curve)
        trials = [
            TrialView(
                **{
                    **t.__dict__,
                    "value": None if t.value is None else 1 - t.value,
                    "intermediate": tuple((p, 1 - v) for p, v in t.intermediate),
                }
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
        trials=tuple(trials),
    )
