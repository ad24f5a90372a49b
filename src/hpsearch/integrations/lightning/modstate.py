"""A module's state that its `state_dict()` leaves out and a run still changes: torchmetrics
`Metric` states (`add_state(..., persistent=False)`, the default) and non-persistent buffers.
Saved with the task's own state, so that a resumed or forked run continues them bit for bit."""

from __future__ import annotations

from typing import Any

import torch

from hpsearch.errors import CheckpointMismatch
from hpsearch.integrations.lightning._compat import Metric


def metrics(module: torch.nn.Module) -> dict[str, Metric]:
    """Every torchmetrics `Metric` in `module`, by its path."""
    return {name: m for name, m in module.named_modules() if isinstance(m, Metric) and name}


def extra_state(module: torch.nn.Module) -> dict[str, Any]:
    """{"metrics": {path: {"states": {name: tensor | [tensors]}, "updates": n}},
    "buffers": {name: tensor}}: what `state_dict()` does not hold."""
    saved = {}
    for path, metric in metrics(module).items():
        states: dict[str, Any] = {}
        for name in metric._defaults:
            value = getattr(metric, name)
            # clones: compute groups share one tensor between metrics, which one file cannot
            states[name] = (
                [t.detach().clone() for t in value]
                if isinstance(value, list)
                else value.detach().clone()
            )
        saved[path] = {"states": states, "updates": int(metric._update_count)}
    persistent = set(module.state_dict(keep_vars=True))
    buffers = {
        name: b
        for name, b in module.named_buffers(remove_duplicate=False)
        if name not in persistent and b is not None
    }
    return {"metrics": saved, "buffers": buffers}


def load_extra_state(module: torch.nn.Module, saved: dict[str, Any]) -> None:
    """Put `extra_state` back (the tensors are taken as they are: the caller copies)."""
    found = metrics(module)
    given = saved.get("metrics", {})
    if set(found) != set(given):
        raise CheckpointMismatch(
            f"the checkpoint holds the metrics {sorted(given)}, the module has {sorted(found)}: "
            "it was made by another version of the LightningModule"
        )
    for path, entry in given.items():
        metric = found[path]
        if set(entry["states"]) != set(metric._defaults):
            raise CheckpointMismatch(
                f"metric {path}: the checkpoint holds the states {sorted(entry['states'])}, "
                f"the metric has {sorted(metric._defaults)}"
            )
        for name, value in entry["states"].items():
            setattr(metric, name, list(value) if isinstance(value, list) else value)
        metric._update_count = int(entry["updates"])
        metric._computed = None
        metric._forward_cache = None
    buffers = dict(module.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for name, value in saved.get("buffers", {}).items():
            if name not in buffers or buffers[name].shape != value.shape:
                raise CheckpointMismatch(
                    f"the checkpoint's non-persistent buffer {name} "
                    f"{tuple(value.shape)} does not fit the module's"
                )
            buffers[name].copy_(value)
