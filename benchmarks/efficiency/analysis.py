"""The target, who reached it at what cost, and the numbers over seeds. Pure functions.

The target of a workload is the median over seeds of the classic arm's final best (TPE +
MedianPruner). An arm "reaches" it in a seed at the first point whose best so far is at least
as good; its cost there is compared with the same seed's classic search (all of it) and with the
cost at which each other arm reached the target in that seed.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from efficiency.records import Run, first_reaching

CLASSIC = "tpe-median"
PBT = "ray-pbt"
HYPERBAND, SHA, TREE_SH = "tpe-hyperband", "tpe-sha", "tree-sh"
# the arms compared against ("fork": the single fork of the issue-14 runs)
NAMES_BASE = (CLASSIC, HYPERBAND, SHA, PBT, TREE_SH, "fork")
EARLIER_THAN = (PBT, HYPERBAND, SHA, TREE_SH)  # issue 23: the tree reaches the target sooner
HALF = 0.5  # the bar: the target at no more than half of classic's samples


def order_of(runs: Sequence[Run], key: str) -> list[str]:
    return list(dict.fromkeys(getattr(r, key) for r in runs))


def targets(runs: Sequence[Run]) -> dict[str, float]:
    """Per workload: the median over seeds of the classic arm's final best."""
    out = {}
    for w in order_of(runs, "workload"):
        finals = [r.final_best for r in runs if r.workload == w and r.arm == CLASSIC]
        vals = [f for f in finals if f is not None]
        if vals:
            out[w] = statistics.median(vals)
    return out


@dataclass
class Reach:
    """One arm, one seed, against its workload's target."""

    arm: str
    seed: int
    final_best: float | None
    total_samples: int
    classic_samples: int | None  # the same seed's classic search, all of it
    samples: int | None  # where the target was first reached (None: never)
    steps: int | None
    wall_s: float | None

    @property
    def ratio(self) -> float | None:
        """Samples to the target over the same seed's classic search's samples."""
        if self.samples is None or not self.classic_samples:
            return None
        return self.samples / self.classic_samples


def reaches(runs: Sequence[Run], workload: str, target: float) -> list[Reach]:
    mine = [r for r in runs if r.workload == workload]
    classic = {r.seed: r.total_samples for r in mine if r.arm == CLASSIC}
    out = []
    for r in mine:
        hit = first_reaching(r, target)
        out.append(Reach(
            r.arm, r.seed, r.final_best, r.total_samples, classic.get(r.seed),
            hit.samples if hit else None, hit.steps if hit else None, hit.wall_s if hit else None,
        ))  # fmt: skip
    return out


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _sd(xs: Sequence[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def against(mine: Sequence[Reach], other: Sequence[Reach]) -> dict[str, Any]:
    """Samples to the target of `mine` over `other`'s, seed by seed: the median ratio over the
    seeds where both reached it, and the seeds where only one did."""
    theirs = {r.seed: r for r in other}
    ratios, only_mine, only_theirs, both_missed = [], 0, 0, 0
    for r in mine:
        o = theirs.get(r.seed)
        if o is None:
            continue
        if r.samples is not None and o.samples is not None:
            ratios.append(r.samples / o.samples)
        elif r.samples is not None:
            only_mine += 1
        elif o.samples is not None:
            only_theirs += 1
        else:
            both_missed += 1
    return {"ratio": _median(ratios), "paired": len(ratios), "only_mine": only_mine,
            "only_theirs": only_theirs, "both_missed": both_missed}  # fmt: skip


def arm_summary(reach: Sequence[Reach], classic: Sequence[Reach], direction: str) -> dict:
    """One arm on one workload, over seeds."""
    finals = [r.final_best for r in reach if r.final_best is not None]
    c_finals = [r.final_best for r in classic if r.final_best is not None]
    sign = 1.0 if direction == "maximize" else -1.0
    med, c_med = _median(finals), _median(c_finals)
    spread = _sd(c_finals) if c_finals else None
    worse = None
    if med is not None and c_med is not None and spread is not None:
        worse = sign * (c_med - med) > spread  # worse than classic beyond the seed spread
    half = sum(r.ratio is not None and r.ratio <= HALF for r in reach)
    return {
        "seeds": len(reach),
        "reached": sum(r.samples is not None for r in reach),
        "reached_half": half,
        "ratio": _median([r.ratio for r in reach]),
        "ratios": [r.ratio for r in reach],
        "total_ratio": _median(
            [r.total_samples / r.classic_samples for r in reach if r.classic_samples]
        ),
        "final_median": med,
        "final_min": min(finals) if finals else None,
        "final_max": max(finals) if finals else None,
        "final_sd": _sd(finals) if finals else None,
        "worse_than_classic": worse,
    }


def earlier(vs: dict[str, Any] | None) -> bool | None:
    """Fewer samples to the target than the baseline where both reach it (the median ratio
    below 1), and no seed where only the baseline reaches it; None: no baseline, or neither
    reached it anywhere."""
    if vs is None or vs["paired"] + vs["only_mine"] + vs["only_theirs"] == 0:
        return None
    return (vs["ratio"] is None or vs["ratio"] < 1.0) and vs["only_theirs"] == 0


def verdict(s: dict[str, Any], vs_pbt: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's conditions for one arm: the target at <= 1/2 of classic's samples in >= 4 of
    5 seeds (4/5 of the seeds), earlier than PBT, no worse than classic beyond the spread."""
    need = -(-4 * s["seeds"] // 5)
    return {"half": s["reached_half"] >= need, "need": need, "earlier_than_pbt": earlier(vs_pbt),
            "quality": s["worse_than_classic"] is False}  # fmt: skip


def forked_winners(runs: Sequence[Run]) -> tuple[int, int]:
    """(seeds whose winner has a node forked with new values on its path, seeds with a winner)."""
    known = [r for r in runs if "winner_forks" in r.settings]
    return sum(1 for r in known if r.settings["winner_forks"] > 0), len(known)


def best_at(run: Run, xs: Sequence[float]) -> list[float | None]:
    """The run's best so far at each cumulative cost x (in full runs), as a step function."""
    at = [p.samples / run.full_samples for p in run.points]
    out: list[float | None] = []
    for x in xs:
        i = bisect.bisect_right(at, x) - 1
        out.append(run.points[i].best if i >= 0 else None)
    return out


def bands(runs: Sequence[Run], xs: Sequence[float]) -> dict[str, list[float | None]]:
    """Median, min and max over seeds of the best so far at each x; None where fewer than half
    the seeds have a completed trial yet (or their search has ended before x)."""
    cols = [best_at(r, xs) for r in runs]
    ends = [r.total_samples / r.full_samples for r in runs]
    med, lo, hi = [], [], []
    for i, x in enumerate(xs):
        vals = [c[i] for c, end in zip(cols, ends, strict=True) if c[i] is not None and x <= end]
        ok = len(vals) * 2 >= len(runs) and vals
        med.append(statistics.median(vals) if ok else None)
        lo.append(min(vals) if ok else None)
        hi.append(max(vals) if ok else None)
    return {"median": med, "min": lo, "max": hi}
