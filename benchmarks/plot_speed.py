"""How long the branch plot takes at 200 and 1,000 synthetic trials: data, then drawing.

Run from the repository root: `PYTHONPATH=src python benchmarks/plot_speed.py [--repeat 3]`.
Prints the median of the repeats, in seconds, for `branch_plot_data` and for `draw_branch_plot`
per format. The study is synthetic (fixed seed): about half the trials pruned at random reports,
a few crashed and continued, a few running, 8 reports per trial.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from hpsearch.plot import branch_plot_data, draw_branch_plot
from hpsearch.views import StudyView, TrialView


def synthetic_study(n: int, seed: int = 0) -> StudyView:
    """n trials forked at epoch 6 with a budget of 2 epochs; accuracy, maximized."""
    rng = random.Random(seed)
    warm, budget, trials = 6.0, 2.0, []
    while len(trials) < n:
        number = len(trials)
        lr = 10 ** rng.uniform(-4, -1)
        quality = 0.97 - 0.08 * abs(math.log10(lr) + 2.5) - rng.uniform(0, 0.03)
        reports = [
            (warm + budget * (k + 1) / 8, quality - 0.2 * (1 - (k + 1) / 8)) for k in range(8)
        ]
        common = {
            "params": {"lr": lr, "dropout": rng.uniform(0, 0.5)},
            "parent_checkpoint": "warmup/step-600",
            "fork_step": 600,
            "fork_progress": warm,
            "steps_trained": 200,
            "samples_trained": 2000,
        }
        roll = rng.random()
        if roll < 0.45:
            k = rng.randrange(1, 7)
            trials.append(
                TrialView(
                    number,
                    "PRUNED",
                    reports[k][1],
                    end_progress=reports[k][0],
                    pruned_at=reports[k][0],
                    intermediate=tuple(reports[: k + 1]),
                    **common,
                )
            )
        elif roll < 0.5 and len(trials) + 2 <= n:
            k = rng.randrange(1, 6)
            trials.append(
                TrialView(
                    number,
                    "FAIL",
                    None,
                    end_progress=reports[k][0],
                    intermediate=tuple(reports[: k + 1]),
                    **common,
                )
            )
            common["fork_progress"] = reports[k][0]
            trials.append(
                TrialView(
                    number + 1,
                    "COMPLETE",
                    reports[-1][1],
                    retry_of=number,
                    end_progress=warm + budget,
                    intermediate=tuple(reports[k + 1 :]),
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
    return StudyView(
        name=f"synthetic-{n}",
        metric="val_accuracy",
        direction="maximize",
        classic=False,
        samples_per_epoch=1797,
        warmup_progress=warm,
        warmup_steps=600,
        warmup_curve=tuple((e / 2, 0.75 - 0.45 * 0.8**e) for e in range(1, 13)),
        trials=tuple(trials),
    )


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--formats", nargs="+", default=["png", "svg", "pdf"])
    args = parser.parse_args()

    header = ["trials", "data s"] + [f"draw {f} s" for f in args.formats]
    print(" | ".join(f"{h:>10}" for h in header))
    with tempfile.TemporaryDirectory() as tmp:
        draw_branch_plot(branch_plot_data(synthetic_study(10)), Path(tmp) / "warm.png")  # imports
        for n in args.sizes:
            view = synthetic_study(n)
            data = branch_plot_data(view)
            row = [median_time(lambda v=view: branch_plot_data(v), args.repeat)]
            for fmt in args.formats:
                out = Path(tmp) / f"plot.{fmt}"
                row.append(median_time(lambda d=data, o=out: draw_branch_plot(d, o), args.repeat))
            print(" | ".join([f"{n:>10}"] + [f"{t:>10.3f}" for t in row]))


if __name__ == "__main__":
    main()
