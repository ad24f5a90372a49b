"""The fork tree's plan: a pure function of the study's trials.

Every node is an Optuna trial holding its place in the tree in its attributes (`generation`,
`parent_trial`, `child`). A *slot* is a place a node fills: `(generation, parent_trial, child)`;
a root's slot is `(0, None, k)` for the k-th root. A retry of a failed node fills the same slot.
Generation 0 has `tree.roots` slots; once every slot of generation g is settled (complete,
pruned, or failed for good), its best complete nodes survive (`survivors_of`) and each survivor
gets `tree.children` slots in generation g+1. Generations are synchronous: a worker with nothing
to ask waits for the generation to settle, so the survivors are ranked on all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import TreeSettings, survivors_of
from hpsearch.search.records import trial_attr
from hpsearch.search.retries import retried_numbers, settled
from hpsearch.search.tree_nodes import Slot, check_nodes


@dataclass(frozen=True)
class Next:
    """What the tree needs now: `slot` to fill, or `wait` for a generation to settle, or neither
    (the tree is grown)."""

    slot: Slot | None = None
    parent: FrozenTrial | None = None  # the survivor the slot forks from (None: a root)
    wait: bool = False


class TreePlan:
    def __init__(
        self, trials: Sequence[FrozenTrial], tree: TreeSettings, direction: str, retries: int
    ) -> None:
        self.tree, self.direction = tree, direction
        self._expected: dict[int, list[Slot] | None] = {}
        self.by_number = {t.number: t for t in trials}
        # every node's place, checked: a damaged one is left out of the plan (`damaged` says why)
        self.nodes = check_nodes(trials, tree)
        self.damaged = self.nodes.damaged
        retried = retried_numbers(trials)
        self.slots: dict[Slot, list[FrozenTrial]] = {}
        for number, slot in self.nodes.slots.items():
            self.slots.setdefault(slot, []).append(self.by_number[number])
        # a slot is settled through its newest trial: a failed node counts through its retry
        self.settled = {
            slot: settled(max(ts, key=lambda t: t.number), trials, retried, retries)
            for slot, ts in self.slots.items()
        }

    @property
    def generations(self) -> int:
        return len(self.tree.rungs)

    def expected(self, g: int) -> list[Slot] | None:
        """The slots of generation g, or None while generation g-1 is not settled."""
        if g not in self._expected:  # each generation's slots depend on all before it: once
            self._expected[g] = self._slots_of(g)
        return self._expected[g]

    def _slots_of(self, g: int) -> list[Slot] | None:
        if g == 0:
            return [(0, None, k) for k in range(self.tree.roots)]
        if not self.is_settled(g - 1):
            return None
        survivors = self.survivors(g - 1)
        return [(g, s.number, c) for s in survivors for c in range(self.tree.children)]

    def is_settled(self, g: int) -> bool:
        slots = self.expected(g)
        return slots is not None and all(self.settled.get(s, False) for s in slots)

    def result(self, slot: Slot) -> FrozenTrial | None:
        """The slot's complete node (a retry chain completes at most once)."""
        done = [t for t in self.slots.get(slot, []) if t.state == TrialState.COMPLETE]
        return max(done, key=lambda t: t.number) if done else None

    def survivors(self, g: int) -> list[FrozenTrial]:
        """The best complete nodes of generation g that have a checkpoint to fork from, best
        first (ties: the earlier trial): its survivors once it is settled, before that the
        nodes that may still be among them (a node behind as many as survive cannot be)."""
        slots = self.expected(g) or []
        done = [t for t in (self.result(s) for s in slots) if t is not None]
        done = [t for t in done if t.value is not None and trial_attr(t, "final_checkpoint")]
        sign = -1.0 if self.direction == "maximize" else 1.0
        done.sort(key=lambda t: (sign * rank_value(t), t.number))
        return done[: survivors_of(self.tree, len(slots))]

    def next(self) -> Next:
        for g in range(self.generations):
            slots = self.expected(g)
            if slots is None:
                return Next(wait=True)
            for slot in slots:
                if slot not in self.slots:
                    parent = self.by_number.get(slot[1]) if slot[1] is not None else None
                    return Next(slot=slot, parent=parent)
        if not self.is_settled(self.generations - 1):
            return Next(wait=True)
        return Next()

    def protected(self) -> set[str]:
        """Final checkpoints new nodes may still fork from: those of the nodes that are (or, in
        a generation not yet settled, may still become) survivors, while the generation after
        them is not settled. At most as many per generation as survive it, so the disk a tree
        holds follows its `keep`, not its number of trials."""
        out: set[str] = set()
        for g in range(self.generations - 1):
            if self.expected(g) is None:
                break
            if self.is_settled(g) and self.is_settled(g + 1):
                continue
            out |= {str(trial_attr(t, "final_checkpoint")) for t in self.survivors(g)}
        return out

    def size(self) -> int:
        """Nodes planned so far (for progress: the generations not yet known at full size)."""
        from hpsearch.config import generation_sizes

        sizes = generation_sizes(self.tree)
        known = 0
        for g in range(self.generations):
            slots = self.expected(g)
            known += len(slots) if slots is not None else sizes[g]
        return known


def rank_value(t: FrozenTrial) -> float:
    """What a complete node is ranked on for survival: its cooldown probe's objective where it
    was probed, else its value (the evaluation of the model in its final checkpoint)."""
    probed = trial_attr(t, "probe_value")
    return float(probed if isinstance(probed, (int, float)) else (t.value or 0.0))
