"""Helpers for tests that run whole studies: small study files written into a temp dir."""

from __future__ import annotations

import os
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
