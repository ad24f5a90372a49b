"""What each of the loop's escape hatches costs in step time, against the plain loop.

    python benchmarks/hatch_cost.py [--repeats 7] [--steps N] [--threads 1] [--device cpu]

On the quickstart MLP (examples/digits.py, batch 64, hidden 256) and the char transformer
(examples/chars.py, batch 32, d=64, 2 layers), one trainer per variant, built once; then in each
repeat every variant in turn (in an order shuffled each repeat) trains --steps optimizer steps
(by default 40 of the MLP, 5 of the transformer; 3 untimed ones before the first repeat), so a
change in the machine's load hits all variants of a repeat alike. A variant's ratio is the
median over the repeats of its step time over the plain loop's step time in the same repeat.
Accumulation keeps the samples per optimizer step: batch b as 2 (or 4) micro-batches of b/2
(b/4). The task-state row is an EMA of the weights updated at every step (the task's own work,
mostly); the last row is the time `Trainer.state()` takes with the EMA in it, against without.
Prints a Markdown table (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

from chars import CharLM  # noqa: E402
from digits import DigitsMLP  # noqa: E402

from hpsearch.config import TrainingSettings as T  # noqa: E402
from hpsearch.training import Budget, Trainer  # noqa: E402

TASKS: dict[str, tuple[type, dict[str, Any]]] = {
    "digits MLP": (DigitsMLP, {"lr": 1e-3, "dropout": 0.1, "batch_size": 64, "hidden": 256,
                               "weight_decay": 1e-4}),
    "char transformer": (CharLM, {"lr": 3e-3, "dropout": 0.1, "batch_size": 32,
                                  "weight_decay": 1e-2, "d_model": 64, "layers": 2, "heads": 4}),
}  # fmt: skip


STEPS = {"digits MLP": 40, "char transformer": 5}  # timed steps per variant and repeat


def _with_step(cls: type) -> type:
    class Step(cls):  # type: ignore[misc, valid-type]
        def training_step(self, model: Any, batch: Any, hparams: Any) -> torch.Tensor:
            return self.loss(model, batch) * float(hparams.get("loss_weight", 1.0))

    return Step


def _with_ema(cls: type) -> type:
    class EMA(cls):  # type: ignore[misc, valid-type]
        ema: list[torch.Tensor] | None = None

        def training_step(self, model: Any, batch: Any, hparams: Any) -> torch.Tensor:
            with torch.no_grad():
                params = list(model.parameters())
                if self.ema is None:
                    self.ema = [p.detach().clone() for p in params]
                torch._foreach_lerp_(self.ema, params, 0.001)
            return self.loss(model, batch)

        def state_dict(self) -> dict[str, Any]:
            return {"ema": self.ema}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.ema = state["ema"]

    return EMA


# variant: (task class transform, hparams change, training settings)
Variant = tuple[Callable[[type], type], Callable[[dict[str, Any]], dict[str, Any]], T]
_same: Callable[[type], type] = lambda c: c  # noqa: E731
_keep: Callable[[dict[str, Any]], dict[str, Any]] = lambda hp: hp  # noqa: E731


def _micro(k: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda hp: {**hp, "batch_size": hp["batch_size"] // k}


def variants(hp: dict[str, Any]) -> dict[str, Variant]:
    b = hp["batch_size"]
    return {
        "plain loop": (_same, _keep, T()),
        "clip_norm: 1.0": (_same, _keep, T(clip_norm=1.0)),
        "clip_value: 0.5": (_same, _keep, T(clip_value=0.5)),
        "accumulate_samples: b, as 2 micro-batches of b/2": (
            _same,
            _micro(2),
            T(accumulate_samples=b),
        ),
        "accumulate_samples: b, as 4 micro-batches of b/4": (
            _same,
            _micro(4),
            T(accumulate_samples=b),
        ),
        "precision: bf16": (_same, _keep, T(precision="bf16")),
        "precision: fp16 (+ GradScaler)": (_same, _keep, T(precision="fp16")),
        "Task.training_step": (_with_step, _keep, T()),
        "Task.state_dict (EMA of the weights)": (_with_ema, _keep, T()),
    }


def _time_steps(trainer: Trainer, steps: int) -> float:
    """Seconds per optimizer step over `steps` steps (3 untimed ones first, the first time)."""
    p = trainer.progress
    if p.step == 0:
        trainer.train(Budget(steps=3))
    start = time.perf_counter()
    trainer.train(Budget(steps=p.step - p.origin_step + steps))
    return (time.perf_counter() - start) / steps


def _time_state(trainer: Trainer, n: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(n):
        trainer.state()
    return (time.perf_counter() - start) / n


Row = tuple[str, float, float]


def measure(name: str, repeats: int, steps: int | None, device: str) -> list[Row]:
    """(variant, median ms per step, median ratio to the plain loop) for one task."""
    cls, hp = TASKS[name]
    steps = steps or STEPS[name]
    datasets = cls().datasets()
    trainers = {}
    for v, (wrap, change, training) in variants(hp).items():
        trainers[v] = Trainer.create(
            wrap(cls)(), change(hp), seed=0, device=device, datasets=datasets,
            training=training, total_samples=10**7,
        )  # fmt: skip
    times: dict[str, list[float]] = {v: [] for v in trainers}
    ratios: dict[str, list[float]] = {v: [] for v in trainers}
    state_ratio: list[float] = []
    order = list(trainers)
    for r in range(repeats):
        random.Random(r).shuffle(order)  # no variant always runs right after another
        for v in order:
            times[v].append(_time_steps(trainers[v], steps))
        base = times["plain loop"][-1]
        for v in trainers:
            ratios[v].append(times[v][-1] / base)
        ema = trainers["Task.state_dict (EMA of the weights)"]
        state_ratio.append(_time_state(ema) / _time_state(trainers["plain loop"]))
    rows = [(v, 1e3 * statistics.median(times[v]), statistics.median(ratios[v])) for v in times]
    rows.append(("Trainer.state() with the EMA / without", float("nan"),
                 statistics.median(state_ratio)))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=None, help="default: 40 (MLP), 5 (chars)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {name: measure(name, args.repeats, args.steps, args.device) for name in TASKS}
    print(f"{platform.node()} {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {args.threads} thread(s), device {args.device}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    names = list(TASKS)
    print("\n| hatch | " + " | ".join(f"{n}: ms/step | {n}: × plain" for n in names) + " |")
    print("| --- |" + " ---: | ---: |" * len(names))
    for i, (variant, *_rest) in enumerate(results[names[0]]):
        cells = []
        for n in names:
            _, ms, ratio = results[n][i]
            cells += ["" if ms != ms else f"{ms:.2f}", f"{ratio:.2f}"]
        label = variant
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
