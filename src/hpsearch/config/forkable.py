"""Forkable keys: the one registry of the hyperparameters a fork applies to a restored training
state without the task's help (SPEC section 5).

The registry says where each key lives; `hpsearch.training.fork` applies it there:

- `lr`: the optimizer: every param group's `lr`, moved by the factor new/old;
- a param-group key (`weight_decay`, `momentum`, `betas`, `eps`): the optimizer: the groups that
  hold the old value;
- the dropout key: the model. Every fork builds the model again with the child's hparams
  (`Task.model` on the meta device) and moves the parent's weights and buffers into it, so every
  place `Task.model` puts the dropout is the child's -- `p` of the `torch.nn.Dropout*` modules,
  the float `dropout` of `torch.nn.MultiheadAttention` (attention weights) and of
  `torch.nn.RNN`/`LSTM`/`GRU` (between stacked layers), the `torch.nn.Transformer*Layer`s' own
  (their Dropout modules and their attention's float), a float a module of the task's keeps for
  `F.dropout`/`F.scaled_dot_product_attention(dropout_p=...)`, a Hugging Face model's config and
  its attention modules' `attention_dropout` floats. What `Task.model` does not build (a value the
  task keeps elsewhere) is the task's to set, in `Task.apply_hparams`;
- `batch_size`: the data stream's batch size, from the same sample position.

`hpsearch.training.forkcheck.check_forkable` checks at load that a fork reaches everything that
holds each searched key. To make another param-group key forkable, add it here as
"param_group"; the fork and the check follow. This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

__all__ = [
    "DROPOUT_KEY",
    "FORKABLE",
    "FORK_KEYS",
    "GROUP_KEYS",
    "ForkKind",
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
