"""The `training:` section: the loop's escape hatches (clipping, accumulation, precision).

    training:
      clip_norm: 1.0            # or clip_value: 0.5 (not both)
      accumulate_samples: 256   # one optimizer step per 256 samples of batch_size micro-batches
      precision: bf16           # fp32 (default), bf16 or fp16

`accumulate_samples` is counted in samples so that a fork that changes `batch_size` keeps the
effective batch: it must be a multiple of the warm-up's batch size and of every batch size the
search space can sample, which is checked here, at load, rather than in the middle of a trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpsearch.config.schema import PRECISIONS, Param, TrainingSettings
from hpsearch.config.values import Bounds, Reader, show

__all__ = ["read_training"]

_KEYS = ("clip_norm", "clip_value", "accumulate_samples", "precision")


def read_training(
    r: Reader, value: Any, fixed: tuple[str, Mapping[str, Any]], space: Mapping[str, Param]
) -> TrainingSettings:
    """The section's settings (the plain loop if it is absent). `fixed` is where the fixed
    hyperparameters are and what they are (`warmup.hparams`, or a fork tree's `tree.hparams`),
    and `space` the search space: `accumulate_samples` is checked against their batch sizes."""
    section = r.mapping(value, "training", _KEYS, optional=True)
    clip = r.exactly_one(section, "training", "clip_norm", "clip_value", required=False)
    clip_norm = clip_value = None
    if clip is not None:
        limit = r.real(
            section[clip], f"training.{clip}", Bounds(gt=0), f"e.g. training: {{{clip}: 1.0}}"
        )
        clip_norm, clip_value = (limit, None) if clip == "clip_norm" else (None, limit)
    accumulate = None
    if section.get("accumulate_samples") is not None:
        accumulate = r.integer(
            section["accumulate_samples"], "training.accumulate_samples", Bounds(ge=1),
            "give the samples per optimizer step, e.g. accumulate_samples: 256",
        )  # fmt: skip
        _check_multiple(r, accumulate, fixed, space)
    precision = r.choice(section.get("precision", "fp32"), "training.precision", PRECISIONS)
    return TrainingSettings(clip_norm, clip_value, accumulate, precision)


def _check_multiple(
    r: Reader, accumulate: int, fixed: tuple[str, Mapping[str, Any]], space: Mapping[str, Param]
) -> None:
    key = "training.accumulate_samples"
    where, hparams = fixed
    size = hparams.get("batch_size")  # a fork tree's tree.hparams hold no sampled key
    if isinstance(size, int) and accumulate % size:
        r.fail(
            key,
            f"must be a multiple of {where}.batch_size ({size}) so that every optimizer "
            f"step sees whole micro-batches, got {accumulate}; use e.g. "
            f"{max(size, accumulate // size * size)}",
        )
    param = space.get("batch_size")
    if param is None:
        return
    for b in _values(param):
        if not isinstance(b, int) or isinstance(b, bool) or b < 1 or accumulate % b:
            fix = (
                "list the batch sizes that divide it, e.g. batch_size: {categorical: ["
                + ", ".join(str(d) for d in _divisors(accumulate)[-4:])
                + "]}"
            )
            r.fail(
                key,
                f"must be a multiple of every batch size search_space.batch_size can sample "
                f"(a fork to {show(b)} could not keep {accumulate} samples per optimizer step), "
                f"got {accumulate}; {fix}",
            )


def _values(param: Param) -> Any:
    """The batch sizes a search-space entry can sample, lazily: the caller stops at the first
    that does not divide, and a range where every value divides is at most a few dozen long."""
    if param.choices is not None:
        yield from param.choices
        return
    if param.kind != "int" or param.low is None or param.high is None:
        yield param.low  # a float range of batch sizes: refused as not an integer
        return
    step = int(param.step or 1)
    if param.log:
        step = 1  # Optuna samples any integer of a log range
    yield from range(int(param.low), int(param.high) + 1, step)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 4096) + 1) if n % d == 0]
