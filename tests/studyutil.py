"""Helpers for tests that run whole studies: small study files written into a temp dir."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "examples", "digits.py") + ":DigitsMLP"


def write_study(tmp_path: Any, name: str = "tiny", **overrides: Any) -> str:
    """A fast digits study (about 0.1 s a trial); keyword arguments replace top-level keys (None
    removes one)."""
    doc: dict[str, Any] = {
        "name": name,
        "task": DIGITS,
        "seed": 0,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "checkpoints": {"every": 0.5, "keep_best": 2},
        "warmup": {
            "epochs": 2,
            "hparams": {
                "lr": 1e-2,
                "dropout": 0.1,
                "batch_size": 64,
                "weight_decay": 1e-4,
                "hidden": 64,
            },
        },
        "trials": {"n": 8, "epochs": 1, "eval_every": 0.25},
        "search_space": {
            "lr": {"float": [1e-4, 3e-2], "log": True},
            "dropout": {"float": [0.0, 0.5]},
            "batch_size": {"categorical": [32, 64, 128]},
        },
        "sampler": {"name": "TPESampler", "n_startup_trials": 3},
        "pruner": {"name": "MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1},
    }
    doc.update(overrides)
    doc = {k: v for k, v in doc.items() if v is not None}
    os.makedirs(str(tmp_path), exist_ok=True)
    path = os.path.join(str(tmp_path), f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


# a fork tree of 12 nodes on the digits task: 4 roots, 2 survivors of each generation forked twice
SMALL_TREE: dict[str, Any] = {
    "warmup": None,
    "tree": {"roots": 4, "rungs": [0.25, 0.5, 1.0], "keep": 0.5, "children": 2,
             "hparams": {"weight_decay": 1e-4, "hidden": 64}},
    "trials": {"epochs": 1, "eval_every": 0.25},
    "schedule": {"name": "wsd", "decay": 0.25},
}  # fmt: skip


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail the body with TimeoutError after `seconds` (of the clock: only a hang gets there, so
    a loaded machine makes it slower, not wrong), rather than wait on it until CI's own limit."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s: a worker waits on nothing")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
