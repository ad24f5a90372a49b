"""Capture and restore the full training state as named tensors plus JSON.

A checkpoint is `{"model": tensors, "optimizer": tensors}` plus one JSON-able dict; nothing here
pickles. Optimizer state of any `torch.optim` optimizer is flattened to `state.<param>.<key>`
tensors (non-tensor values go to JSON) and its param groups to JSON.
"""

from __future__ import annotations

import base64
import random
from collections import Counter
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
    typed = sorted(
        f"{k} (checkpoint {tensors[k].dtype}, model {v.dtype})"
        for k, v in expected.items()
        if k in tensors and tensors[k].dtype != v.dtype
    )
    problems = []
    if typed:
        problems.append(f"keys of another dtype: {', '.join(typed)}")
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


def model_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict with each shared tensor once, and the alias map {alias: name}.

    Tied weights (`head.weight = emb.weight`, as in GPT-2) appear twice in `state_dict()` over
    one storage; safetensors stores a storage once, so the second name is kept as an alias and
    `load_model_state` re-ties it.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, t in model.state_dict().items():
        if t.numel() and t.device.type != "meta":
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype,
                   tuple(t.shape), t.stride())  # fmt: skip
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
        tensors[name] = t
    return tensors, aliases


def expand_aliases(
    tensors: Mapping[str, torch.Tensor], aliases: Mapping[str, str] | None
) -> dict[str, torch.Tensor]:
    """Every state-dict name, the aliases pointing at the tensor of the name they share."""
    out = dict(tensors)
    for alias, name in (aliases or {}).items():
        if not isinstance(alias, str) or name not in tensors:
            raise CheckpointMismatch(
                f"the checkpoint's alias {alias!r} -> {name!r} names no saved tensor"
            )
        out[alias] = tensors[name]
    return out


def tied_names(model: torch.nn.Module) -> list[list[str]]:
    """Groups of parameter/buffer names that are one object in `model` (tied weights)."""
    by_id: dict[int, list[str]] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, t in named:
        by_id.setdefault(id(t), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def retie(model: torch.nn.Module, groups: list[list[str]]) -> None:
    """Make each group's names one object again, the first name's, as `Task.model()` built
    them: a load with `assign=True` gives every name its own tensor."""
    for first, *rest in groups:
        obj = model.get_parameter(first) if _is_param(model, first) else model.get_buffer(first)
        for name in rest:
            prefix, _, leaf = name.rpartition(".")
            owner = model.get_submodule(prefix)
            if isinstance(obj, torch.nn.Parameter):
                owner._parameters[leaf] = obj
            else:
                owner._buffers[leaf] = obj


def _is_param(model: torch.nn.Module, name: str) -> bool:
    prefix, _, leaf = name.rpartition(".")
    return leaf in model.get_submodule(prefix)._parameters


def load_model_state(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], *, assign: bool = False
) -> None:
    """Load weights. With `assign`, the module takes the given tensors (zero copy); tied weights
    stay tied either way."""
    check_model_keys(model, tensors)
    groups = tied_names(model)
    with torch.no_grad():
        model.load_state_dict(dict(tensors), strict=True, assign=assign)
    if assign:
        retie(model, groups)


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
                g[key] = tensor_ref(f"group.{i}.{key}")
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
        g: dict[str, Any] = {}
        for key, value in saved.items():
            if (name := tensor_name(value)) is not None:
                g[key] = tensors[name]
            elif isinstance(now.get(key), tuple) and isinstance(value, list):
                g[key] = tuple(value)  # JSON has no tuples; betas must stay one
            else:
                g[key] = from_json(value)
        groups.append(g)
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for pid, entry in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update({k: from_json(v) for k, v in entry.items()})
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
            if (ref := tensor_name(value)) is not None:
                group[key] = tensors[ref].clone()
            elif isinstance(group.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
            else:
                group[key] = from_json(value)
    for pid, entry in meta.get("scalars", {}).items():
        optimizer.state[params[int(pid)]].update({k: from_json(v) for k, v in entry.items()})


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
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
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
#
# Saved JSON marks what plain JSON cannot say with dicts of reserved keys: a tensor's place
# `{"__tensor__": name}`, a dict with keys that are not strings `{"__items__": ..., "__type__":
# ...}`. A user's dict of exactly such keys (a task's state may hold anything) is saved wrapped
# as `{"__escaped__": dict}`, so no value of the user's is ever read back as a marker; a
# checkpoint written before the wrapper holds none and reads as it did.

TENSOR = "__tensor__"
_ESCAPED = "__escaped__"
_RESERVED = ({TENSOR}, {"__items__", "__type__"}, {_ESCAPED})
MAX_DEPTH = 100  # nested containers in saved JSON: far more than any state needs


def tensor_ref(name: str) -> dict[str, str]:
    """The JSON that stands for the saved tensor `name`."""
    return {TENSOR: name}


def tensor_name(value: Any) -> str | None:
    """The tensor name if `value` is a `tensor_ref`, else None."""
    if isinstance(value, dict) and set(value) == {TENSOR} and isinstance(value[TENSOR], str):
        return value[TENSOR]
    return None


def plain_dict(value: dict[str, Any]) -> dict[str, Any]:
    """A user's (already converted) dict as saved: wrapped if its keys are a marker's."""
    return {_ESCAPED: value} if set(value) in _RESERVED else value


def unwrapped(value: Any) -> dict[str, Any] | None:
    """The user's dict inside a `plain_dict` wrapper, or None if `value` is no wrapper."""
    if isinstance(value, dict) and set(value) == {_ESCAPED} and isinstance(value[_ESCAPED], dict):
        return value[_ESCAPED]
    return None


def to_json(value: Any, what: str, _depth: int = 0) -> Any:
    """Convert tuples and NumPy scalars; refuse what JSON cannot hold, naming it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if _depth >= MAX_DEPTH and isinstance(value, (tuple, list, dict)):
        raise TypeError(
            f"{what}: nested more than {MAX_DEPTH} levels deep; hpsearch saves state a few "
            "levels deep (flatten it)"
        )
    if isinstance(value, (tuple, list)):
        return [to_json(v, what, _depth + 1) for v in value]
    if isinstance(value, Counter) or (
        isinstance(value, dict) and not all(isinstance(k, str) for k in value)
    ):
        # JSON keys are strings: MultiStepLR's milestones (a Counter of ints) would come back as
        # {"2": 1} and never match an int step again. Keep the pairs and the type.
        kind = "counter" if isinstance(value, Counter) else "dict"
        items = [[to_json(k, what, _depth + 1), to_json(v, what, _depth + 1)]
                 for k, v in value.items()]  # fmt: skip
        return {"__items__": items, "__type__": kind}
    if isinstance(value, dict):
        return plain_dict({k: to_json(v, what, _depth + 1) for k, v in value.items()})
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(
        f"{what}: a value of type {type(value).__name__} cannot be saved as JSON; hpsearch "
        "saves only tensors and JSON (never pickle)"
    )


def from_json(value: Any) -> Any:
    """Undo `to_json`'s tagging of dicts whose keys are not strings (a Counter stays one) and
    its wrapping of a user's dict shaped like a marker."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        inner = unwrapped(value)
        if inner is not None:
            return {k: from_json(v) for k, v in inner.items()}
        if set(value) == {"__items__", "__type__"}:
            pairs = [(_key(from_json(k)), from_json(v)) for k, v in value["__items__"]]
            return Counter(dict(pairs)) if value["__type__"] == "counter" else dict(pairs)
        return {k: from_json(v) for k, v in value.items()}
    return value


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k  # a list key was a tuple: keep it hashable
