"""What one search leaves: one point per finished trial (or PBT report), cumulative cost, best so
far. Pure data and pure functions; the JSON file is a list of runs."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

ATTR = "hpsearch."
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class Point:
    """The state of a search right after one of its trials (or PBT reports) finished."""

    trial: int
    state: str
    value: float | None
    steps: int  # cumulative training steps (warm-up, roots, probes, pruned trials included)
    samples: int
    wall_s: float  # since the search's first trial began
    best: float | None  # best value of a completed trial so far
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    workload: str
    arm: str  # tpe-median | tpe-hyperband | tpe-sha | ray-pbt | tree-sh | tree | tree-half | ...
    seed: int
    direction: str
    metric: str
    full_samples: int  # one run from scratch over the full budget
    budget_samples: int  # the budget the arm was given, in samples
    wall_s: float
    points: list[Point] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # arm settings worth reporting

    @property
    def final_best(self) -> float | None:
        return self.points[-1].best if self.points else None

    @property
    def total_steps(self) -> int:
        return self.points[-1].steps if self.points else 0

    @property
    def total_samples(self) -> int:
        return self.points[-1].samples if self.points else 0


def better(direction: str) -> Any:
    return max if direction == "maximize" else min


def reached(best: float | None, target: float, direction: str) -> bool:
    if best is None:
        return False
    return best >= target if direction == "maximize" else best <= target


def first_reaching(run: Run, target: float | None) -> Point | None:
    """The first point of `run` whose best so far is at least as good as `target`."""
    if target is None:
        return None
    return next((p for p in run.points if reached(p.best, target, run.direction)), None)


def curve(
    trials: Sequence[Any],
    *,
    direction: str,
    started: dt.datetime,
    extra_steps: int = 0,
    extra_samples: int = 0,
) -> list[Point]:
    """Per-trial points of one search from its Optuna trials (FrozenTrial-like objects).

    Trials are taken in order of completion; `extra_*` (a single fork's warm-up, trained outside
    any trial) is counted once, before the first. Only completed trials count towards the best
    value, as in Optuna: a pruned trial's last report is a model nobody would keep.

    Each trial's `samples_trained` counts everything it trained once, a cooldown probe included
    (hpsearch counts the probe's samples in the node's own), so nothing is added here. A node
    ranked on a probe keeps its own value at the rung, the model in its final checkpoint, as
    `rung_value` where its Optuna value was the probe's (before the one-winner rule); the best so
    far takes that one: the probe's model is not kept."""
    done = [t for t in trials if t.state.name in FINISHED and t.datetime_complete is not None]
    done.sort(key=lambda t: (t.datetime_complete, t.number))
    pick = better(direction)
    steps, samples, best = extra_steps, extra_samples, None
    points = []
    for t in done:
        steps += int(t.user_attrs.get(ATTR + "steps_trained", 0))
        samples += int(t.user_attrs.get(ATTR + "samples_trained", 0))
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        rung = t.user_attrs.get(ATTR + "rung_value")
        if rung is not None:
            value = rung if math.isfinite(rung) else None
        if t.state.name == "COMPLETE" and value is not None:
            best = value if best is None else pick(best, value)
        wall = (t.datetime_complete - started).total_seconds()
        points.append(
            Point(t.number, t.state.name, value, steps, samples, wall, best, dict(t.params))
        )
    return points


def save_runs(path: str, runs: Sequence[Run], meta: dict[str, Any]) -> None:
    doc = {**meta, "runs": [asdict(r) for r in runs]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)


def load_runs(path: str) -> tuple[dict[str, Any], list[Run]]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    runs = []
    for r in doc.pop("runs"):
        points = [Point(**p) for p in r.pop("points")]
        runs.append(Run(**r, points=points))
    return doc, runs


def merge(runs: Sequence[Run]) -> list[Run]:
    """Later runs replace earlier ones of the same (workload, arm, seed): a rerun of one arm
    merged over a whole benchmark's JSON replaces that arm only."""
    by: dict[tuple[str, str, int], Run] = {}
    for r in runs:
        by[r.workload, r.arm, r.seed] = r
    return list(by.values())
