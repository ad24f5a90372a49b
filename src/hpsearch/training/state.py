"""Capture and restore the full training state as named tensors plus JSON.

A checkpoint is `{"model": tensors, "optimizer": tensors}` plus one JSON-able dict; nothing here
pickles. Optimizer state of any `torch.optim` optimizer is flattened to `state.<param>.<key>`
tensors (non-tensor values go to JSON) and its param groups to JSON.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from hpsearch.errors import CheckpointMismatch

# ---------------------------------------------------------------------------------------------
# model


def check_model_keys(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise CheckpointMismatch naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shaped = sorted(
        f"{k} (checkpoint {tuple(tensors[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if shaped:
        problems.append(f"mis-shaped keys: {', '.join(shaped)}")
    if problems:
        raise CheckpointMismatch(
            "the checkpoint does not fit the model: "
            + "; ".join(problems)
            + ". Was the checkpoint made with other shape hyperparameters (they are fixed by the "
            "warm-up) or another version of the task?"
        )


def load_model_state(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], *, assign: bool = False
) -> None:
    """Load weights. With `assign`, the module takes the given tensors (zero copy)."""
    check_model_keys(model, tensors)
    with torch.no_grad():
        model.load_state_dict(dict(tensors), strict=True, assign=assign)


# ---------------------------------------------------------------------------------------------
# optimizer


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten `optimizer.state_dict()` into tensors and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = to_json(value, f"optimizer state {key}")
    groups = []
    for i, group in enumerate(sd["param_groups"]):
        g = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"group.{i}.{key}"] = value
                g[key] = {"__tensor__": f"group.{i}.{key}"}
            else:
                g[key] = to_json(value, f"optimizer param group {key}")
        groups.append(g)
    return tensors, {"class": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Rebuild `state_dict()` from the flat form and load it.

    Note: `load_state_dict` keeps the tensors it is given, so callers that hold the source
    (a base checkpoint in memory) must pass copies.
    """
    if meta["class"] != type(optimizer).__name__:
        raise CheckpointMismatch(
            f"the checkpoint's optimizer is {meta['class']}, the task builds "
            f"{type(optimizer).__name__}"
        )
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(meta["param_groups"]):
        raise CheckpointMismatch(
            f"the checkpoint has {len(meta['param_groups'])} optimizer param groups, "
            f"the optimizer has {len(current)}"
        )
    groups = []
    for now, saved in zip(current, meta["param_groups"], strict=True):
        if len(now["params"]) != len(saved["params"]):
            raise CheckpointMismatch(
                f"an optimizer param group holds {len(saved['params'])} parameters in the "
                f"checkpoint but {len(now['params'])} in the optimizer"
            )
        g = {}
        for key, value in saved.items():
            if isinstance(value, dict) and "__tensor__" in value:
                g[key] = tensors[value["__tensor__"]]
            elif isinstance(now.get(key), tuple) and isinstance(value, list):
                g[key] = tuple(value)  # JSON has no tuples; betas must stay one
            else:
                g[key] = value
        groups.append(g)
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for pid, entry in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def copy_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Like `load_optimizer_state`, but copies into the optimizer's existing state tensors when
    shapes match (memcpy into memory already touched), so the source stays untouched."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = {tuple(n.split(".", 2)[1:]) for n in tensors if n.startswith("state.")}
    saved |= {(pid, key) for pid, entry in meta.get("scalars", {}).items() for key in entry}
    held = {(str(i), key) for i, p in enumerate(params) for key in optimizer.state.get(p, {})}
    # the same entries, tensors of the same shapes: else state the checkpoint lacks (a parameter
    # the previous trial trained and the base did not) would survive the copy
    fits = saved == held
    for name, src in tensors.items():
        if not fits:
            break
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            dst = optimizer.state[params[int(pid)]][key]
            fits = (
                isinstance(dst, torch.Tensor) and dst.shape == src.shape and dst.dtype == src.dtype
            )
    if not fits:
        load_optimizer_state(optimizer, {k: v.clone() for k, v in tensors.items()}, meta)
        return
    for name, src in tensors.items():
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            optimizer.state[params[int(pid)]][key].copy_(src)
    for group, saved in zip(optimizer.param_groups, meta["param_groups"], strict=True):
        for key, value in saved.items():
            if key == "params":
                continue
            if isinstance(value, dict) and "__tensor__" in value:
                group[key] = tensors[value["__tensor__"]].clone()
            elif isinstance(group.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
            else:
                group[key] = value
    for pid, entry in meta.get("scalars", {}).items():
        optimizer.state[params[int(pid)]].update(entry)


# ---------------------------------------------------------------------------------------------
# RNG


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step can draw from: Python, NumPy, torch CPU, and CUDA per device."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# JSON


def to_json(value: Any, what: str) -> Any:
    """Convert tuples and NumPy scalars; refuse what JSON cannot hold, naming it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [to_json(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v, what) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(
        f"{what}: a value of type {type(value).__name__} cannot be saved as JSON; hpsearch "
        "saves only tensors and JSON (never pickle)"
    )
