"""The user's budget, in full runs, and the fork tree's shape sized from it: pure functions.

A *full run* is one training from scratch over `trials.epochs` (a fork tree), or over the warm-up
and a trial together (a `warmup:` study and the classic twin): what one classic trial trains.
`trials.budget: 16` says "spend about 16 of those, every root, pruned node, probe and warm-up
counted". A classic search stops starting trials once it has spent it, a single fork counts its
warm-up in it, and a fork tree takes as many roots as make its shape spend about the budget:

    >>> shape = TreeSettings(roots=1, rungs=(0.25, 0.5, 1.0), keep=0.25, children=2,
    ...                      probe=0.0, hparams={})
    >>> roots_for(8.0, shape)
    16
    >>> tree_cost(dataclasses.replace(shape, roots=16))   # 16 x 1/4 + 8 x 1/4 + 4 x 1/2
    8.0

The shape keys the study file gives (`tree.roots`, `rungs`, `keep`, `children`, `probe`) are
overrides: a file that gives `tree.roots` gets that many, whatever its budget.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

from hpsearch.config.schema import TreeSettings

__all__ = [
    "DEFAULT_BUDGET",
    "describe_tree",
    "generation_sizes",
    "roots_for",
    "survivors_of",
    "tree_cost",
]

# Full runs for a study file that gives neither `trials.budget` nor `tree.roots`: about what the
# former fixed default (12 roots) cost, so such a file keeps its size.
DEFAULT_BUDGET = 6.0
MAX_ROOTS = 100_000


def survivors_of(tree: TreeSettings, generation_size: int) -> int:
    """How many nodes of a generation of this (planned) size survive its rung."""
    return max(1, math.ceil(tree.keep * generation_size - 1e-9))


def generation_sizes(tree: TreeSettings) -> list[int]:
    """The number of nodes in each generation, as planned: survivors follow the plan."""
    sizes = [tree.roots]
    for _ in tree.rungs[1:]:
        sizes.append(survivors_of(tree, sizes[-1]) * tree.children)
    return sizes


def tree_cost(tree: TreeSettings) -> float:
    """What the tree trains, in full runs, if no node is pruned: each node trains from its
    parent's rung to its own, and each node but the last generation's probes `probe`."""
    sizes = generation_sizes(tree)
    starts = (0.0, *tree.rungs[:-1])
    train = sum(n * (end - start) for n, start, end in zip(sizes, starts, tree.rungs, strict=True))
    return train + tree.probe * sum(sizes[:-1])


def roots_for(budget: float, shape: TreeSettings) -> int:
    """The number of roots whose tree of this shape costs closest to `budget` full runs (ties:
    the cheaper), at least 1. The cost grows with the roots, so the search stops past it."""
    best, best_gap = 1, math.inf
    roots = 1
    while roots <= MAX_ROOTS:
        cost = tree_cost(dataclasses.replace(shape, roots=roots))
        gap = abs(cost - budget)
        if gap < best_gap - 1e-9:
            best, best_gap = roots, gap
        if cost > budget:
            break
        roots += 1
    return best


def describe_tree(tree: TreeSettings, budget: float | None) -> str:
    """What a tree will do, in one line: "budget 8 full runs: 16 roots to 1/4, the best 4
    forked into 2 each to 1/2 (8 nodes), the best 2 forked into 2 each to 1 (4 nodes): 28
    nodes, about 8.0 full runs"."""
    sizes = generation_sizes(tree)
    parts = [f"{tree.roots} root{'s' if tree.roots != 1 else ''} to {_frac(tree.rungs[0])}"]
    for g in range(1, len(sizes)):
        kept = survivors_of(tree, sizes[g - 1])
        how = "continued" if tree.children == 1 else f"forked into {tree.children} each"
        parts.append(f"the best {kept} {how} to {_frac(tree.rungs[g])} ({sizes[g]} nodes)")
    probe = f", each ranked on a cooldown probe of {_frac(tree.probe)}" if tree.probe else ""
    if budget is None:
        head = f"tree.roots {tree.roots}"
    else:
        head = f"budget {_num(budget)} full run{'s' if budget != 1 else ''}"
        if not tree.sized:
            head += f" (tree.roots {tree.roots} given)"
    return (
        f"{head}: {', '.join(parts)}{probe}: {sum(sizes)} nodes, about "
        f"{tree_cost(tree):.1f} full runs"
    )


def _frac(x: float) -> str:
    f = Fraction(x).limit_denominator(64)
    return str(f) if abs(float(f) - x) < 1e-9 else f"{x:g}"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:g}"
