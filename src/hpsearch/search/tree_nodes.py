"""A fork tree's nodes as their trials record them, checked before anything trusts them.

Every node holds its place in the tree in three attributes of its trial (`generation`,
`parent_trial`, `child`). They are data in a shared database: a hand edit, another program or a
damaged row can make them wrong (a string generation, a parent cycle, a generation past the last
rung, a parent of the wrong generation). `check_nodes` reads them once, typed and range-checked,
so that the plan, the winner, the recipe and the reports all see the same valid tree; a node
whose place is invalid is left out of all of them and said once, never raised on or looped on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import TreeSettings
from hpsearch.search.records import NEVER_RAN, PREFIX

Slot = tuple[int, int | None, int]  # (generation, parent trial, child index)

_KEYS = ("generation", "parent_trial", "child")


@dataclass(frozen=True)
class TreeNodes:
    """The study's valid nodes (trial number -> slot) and the damaged ones (-> why)."""

    slots: dict[int, Slot] = field(default_factory=dict)
    damaged: dict[int, str] = field(default_factory=dict)

    def lineage(self, number: int) -> list[int]:
        """`number` and its ancestors up to a root, by `parent_trial` (valid nodes only)."""
        out = []
        cur: int | None = number
        while cur is not None and cur in self.slots:
            out.append(cur)
            cur = self.slots[cur][1]
        return out


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _raw(t: FrozenTrial) -> tuple[Any, Any, Any] | None:
    """The three attributes as stored, or None when the trial holds no place (no generation)."""
    if PREFIX + "generation" not in t.user_attrs:
        return None
    return tuple(t.user_attrs.get(PREFIX + k) for k in _KEYS)  # type: ignore[return-value]


def _placeless_is_damage(t: FrozenTrial) -> bool:
    """A tree study's trial with no place: a hand-enqueued trial waiting to be placed, or one
    that could not be (FAIL with its reason), is not damage; anything that ran is."""
    if t.state == TrialState.WAITING:
        return False
    return not (t.state == TrialState.FAIL and t.user_attrs.get(PREFIX + "fail_kind") in NEVER_RAN)


def check_nodes(trials: Sequence[FrozenTrial], tree: TreeSettings | None) -> TreeNodes:
    """Every trial's place in the tree, checked: a generation that is an integer of the tree's
    rungs, a child index within its generation's, a root without a parent, and a child whose
    parent is a valid node of the generation before (which also rules out cycles). Without the
    tree's settings (a file that no longer says `tree:`, read by a report), the shape's bounds
    are not checked, the rest is."""
    big = 1 << 62
    generations = len(tree.rungs) if tree is not None else big
    roots, children = (tree.roots, tree.children) if tree is not None else (big, big)
    by_number = {t.number: t for t in trials}
    slots: dict[int, Slot] = {}
    damaged: dict[int, str] = {}
    candidates: list[tuple[int, int, int | None, int]] = []
    for t in trials:
        raw = _raw(t)
        if raw is None:
            if _placeless_is_damage(t):
                damaged[t.number] = f"it is {t.state.name} but holds no place in the tree"
            continue
        g, parent, child = raw
        if not _integer(g) or not 0 <= g < generations:
            bound = f"0..{generations - 1} (one per rung)" if tree is not None else ">= 0"
            damaged[t.number] = f"generation {g!r} is not an integer in {bound}"
        elif g == 0 and parent is not None:
            damaged[t.number] = f"a root (generation 0) with a parent_trial ({parent!r})"
        elif g > 0 and (not _integer(parent) or parent not in by_number):
            damaged[t.number] = f"its parent_trial {parent!r} is not a trial of the study"
        elif not _integer(child) or not 0 <= child < (roots if g == 0 else children):
            most = roots if g == 0 else children
            damaged[t.number] = f"child index {child!r} is not an integer in 0..{most - 1}"
        else:
            candidates.append((g, t.number, parent, child))
    claimed = {number: g for g, number, _, _ in candidates}
    for g, number, parent, child in sorted(candidates, key=lambda c: (c[0], c[1])):
        if g > 0:  # parents come first: generations in increasing order
            assert parent is not None  # checked above
            if parent in claimed and claimed[parent] != g - 1:
                damaged[number] = (
                    f"generation {g}, but its parent trial {parent} is of generation "
                    f"{claimed[parent]}, not {g - 1}"
                )
                continue
            if parent not in slots:
                why = damaged.get(parent)
                damaged[number] = f"its parent trial {parent} is not a valid node" + (
                    f" ({why})" if why else ""
                )
                continue
        slots[number] = (g, parent, child)
    return TreeNodes(slots, damaged)


__all__ = ["Slot", "TreeNodes", "check_nodes"]
