"""JSON read strictly, for the format's headers and manifests (no torch: the read-only commands
check manifests without importing it)."""

from __future__ import annotations

from typing import Any


def strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` that refuses a key given twice (JSON parsers keep the last one, so a
    forged file could show one value to a checker and another to a reader)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return out


def is_nat(x: object) -> bool:
    """A non-negative int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
