"""Forkable keys: the one registry of the hyperparameters a fork applies to a restored training
state without the task's help (SPEC section 5), and the check that a study's search space holds
only keys its task can fork.

The registry says what each key is; `hpsearch.training.fork` applies it by that kind:

- `lr`: every param group's `lr`, moved by the factor new/old;
- a param-group key (`weight_decay`, `momentum`, `betas`, `eps`): the groups that hold the old
  value;
- the dropout key: `p` of every module in `DROPOUT_MODULES`;
- `batch_size`: the data stream's batch size, from the same sample position.

To make another param-group key forkable, add it here as "param_group"; both the fork and
`hpsearch.training.forkcheck.check_forkable` follow. This module imports no torch: only
`dropout_types` does, when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    # The base torch gives every dropout class: it types `p` as a float, as nn.Module cannot.
    from torch.nn.modules.dropout import _DropoutNd


__all__ = [
    "DROPOUT_KEY",
    "DROPOUT_MODULES",
    "FORKABLE",
    "FORK_KEYS",
    "GROUP_KEYS",
    "ForkKind",
    "dropout_types",
]

ForkKind = Literal["lr", "param_group", "dropout", "batch_size"]

FORK_KEYS: Mapping[str, ForkKind] = MappingProxyType(
    {
        "lr": "lr",
        "weight_decay": "param_group",
        "momentum": "param_group",
        "betas": "param_group",
        "eps": "param_group",
        "dropout": "dropout",
        "batch_size": "batch_size",
    }
)
"""Every forkable key and what it is, in the order messages list them."""

FORKABLE: tuple[str, ...] = tuple(FORK_KEYS)
"""Hyperparameters a fork applies to a restored state without the task's help (SPEC section 5)."""

GROUP_KEYS: tuple[str, ...] = tuple(k for k, kind in FORK_KEYS.items() if kind == "param_group")
"""The forkable keys that live in the optimizer's param groups."""

DROPOUT_KEY = next(k for k, kind in FORK_KEYS.items() if kind == "dropout")

DROPOUT_MODULES = (
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
)
"""The `torch.nn` classes whose `p` the dropout key sets (names: this module needs no torch)."""


def dropout_types() -> tuple[type[_DropoutNd], ...]:
    """The `DROPOUT_MODULES` classes; imports torch."""
    import torch

    return tuple(getattr(torch.nn, name) for name in DROPOUT_MODULES)
