"""How long the branch plot takes at 200 and 1,000 synthetic trials: data, then drawing.

Run from the repository root: `PYTHONPATH=src python benchmarks/plot_speed.py [--repeat 3]`.
Prints the median of the repeats, in seconds, for `branch_plot_data` and for `draw_branch_plot`
per format. The study is synthetic (fixed seed): about half the trials pruned at random reports,
a few crashed and continued, a few running, 8 reports per trial.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hpsearch.report.plot import branch_plot_data, draw_branch_plot
from hpsearch.testing import synthetic_study


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
