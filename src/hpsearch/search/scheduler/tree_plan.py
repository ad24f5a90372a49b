"""The fork tree's plan: a pure function of the study's trials.

Every node is an Optuna trial holding its place in the tree in its attributes (`generation`,
`parent_trial`, `child`). A *slot* is a place a node fills: `(generation, parent_trial, child)`;
a root's slot is `(0, None, k)` for the k-th root. A retry of a failed node fills the same slot.
Generation 0 has `tree.roots` slots; each node of generation g that is *promoted* gets
`tree.children` slots in generation g+1. Two rules say which nodes are promoted and when:

- `TreePlan` (`tree.promotion: sync`): once every slot of generation g is settled (complete,
  pruned, or failed for good), its best complete nodes survive (`survivors_of`) and are all
  promoted. A worker with nothing to ask waits for the generation to settle, so the survivors
  are ranked on all of it.
- `AsyncTreePlan` (`tree_async.py`, the default): a node is promoted as soon as it ranks in the
  best `keep` of its generation's nodes settled so far, and a worker with nothing to promote
  starts a new root, so no worker waits for a generation.

Both give the same generation sizes (so the same budget) when no node is pruned; `plan_of` picks
the study's.
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
    """What the tree needs now: `slot` to fill, or `wait` for running nodes to settle, or
    neither (the tree is grown)."""

    slot: Slot | None = None
    parent: FrozenTrial | None = None  # the node the slot forks from (None: a root)
    wait: bool = False


class Nodes:
    """What both rules read: the valid nodes by slot, which slots are settled, and each slot's
    complete node; `candidates()` lists the slots to fill now, in the order to try them (a
    worker that finds one taken by another tries the next)."""

    def __init__(
        self, trials: Sequence[FrozenTrial], tree: TreeSettings, direction: str, retries: int
    ) -> None:
        self.tree, self.direction = tree, direction
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

    def result(self, slot: Slot) -> FrozenTrial | None:
        """The slot's complete node (a retry chain completes at most once)."""
        done = [t for t in self.slots.get(slot, []) if t.state == TrialState.COMPLETE]
        return max(done, key=lambda t: t.number) if done else None

    def ranked(self, slots: Sequence[Slot]) -> list[FrozenTrial]:
        """The complete nodes of `slots` that have a checkpoint to fork from, best first (ties:
        the earlier trial)."""
        done = [t for t in (self.result(s) for s in slots) if t is not None]
        done = [t for t in done if t.value is not None and trial_attr(t, "final_checkpoint")]
        sign = -1.0 if self.direction == "maximize" else 1.0
        done.sort(key=lambda t: (sign * rank_value(t), t.number))
        return done

    def next_of(self, slot: Slot) -> Next:
        """Filling `slot`: the slot and the node it forks from (None: a root)."""
        parent = self.by_number.get(slot[1]) if slot[1] is not None else None
        return Next(slot=slot, parent=parent)

    def candidates(self) -> list[Next]:
        raise NotImplementedError

    def grown(self) -> bool:
        """Nothing is left to ask or to wait for."""
        raise NotImplementedError

    def next(self) -> Next:
        """The first slot to fill, else wait while the tree is not grown, else neither."""
        for nxt in self.candidates():
            return nxt
        return Next() if self.grown() else Next(wait=True)

    def protected(self) -> set[str]:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError


class TreePlan(Nodes):
    """The synchronous rule (`tree.promotion: sync`): generation by generation."""

    def __init__(
        self, trials: Sequence[FrozenTrial], tree: TreeSettings, direction: str, retries: int
    ) -> None:
        super().__init__(trials, tree, direction, retries)
        self._expected: dict[int, list[Slot] | None] = {}

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

    def survivors(self, g: int) -> list[FrozenTrial]:
        """The best complete nodes of generation g that have a checkpoint to fork from, best
        first (ties: the earlier trial): its survivors once it is settled, before that the
        nodes that may still be among them (a node behind as many as survive cannot be)."""
        slots = self.expected(g) or []
        return self.ranked(slots)[: survivors_of(self.tree, len(slots))]

    def candidates(self) -> list[Next]:
        """The unfilled slots of the first generation that has any, once it is known."""
        for g in range(self.generations):
            slots = self.expected(g)
            if slots is None:
                return []
            missing = [self.next_of(slot) for slot in slots if slot not in self.slots]
            if missing:
                return missing
        return []

    def grown(self) -> bool:
        return self.is_settled(self.generations - 1)

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


def plan_of(
    trials: Sequence[FrozenTrial], tree: TreeSettings, direction: str, retries: int
) -> Nodes:
    """The study's plan under its `tree.promotion` rule."""
    if tree.promotion == "sync":
        return TreePlan(trials, tree, direction, retries)
    from hpsearch.search.scheduler.tree_async import AsyncTreePlan

    return AsyncTreePlan(trials, tree, direction, retries)
