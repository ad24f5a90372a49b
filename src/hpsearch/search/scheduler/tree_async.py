"""The asynchronous fork tree's plan (`tree.promotion: async`, the default): a pure function of
the study's trials. Nodes are promoted as ASHA promotes (Li et al., "A System for Massively
Parallel Hyperparameter Tuning", 2020; Syne Tune's `PromotionRungSystem` resumes paused trials
the same way): as soon as they rank in the top fraction of the nodes that have reached their
rung so far, never waiting for a generation to settle.

The rule, for each generation g but the last (its nodes end at rung g):

- *settled(g)*: the slots of generation g that are settled (complete, pruned, or failed for
  good); *promoted(g)*: the nodes of g that have children (the parents of generation g+1).
- *closed(g)*: no node of g is still to come and every one of them is settled -- for the roots,
  all `tree.roots` slots; for g > 0, generation g-1 is closed with its promotions final and
  every child slot of its promoted nodes filled.
- *quota(g)*: how many nodes of g may be promoted by now: `floor(keep x settled(g))` while g is
  open, `survivors_of(size of g)` (the synchronous tree's count) once it is closed.
- While `len(promoted(g)) < quota(g)`, the best complete node of g that is not promoted yet
  (ranked as the synchronous tree ranks: its cooldown probe, else its value) may be promoted:
  it gets `tree.children` slots in generation g+1, all starting at its final checkpoint, so
  the pruner compares children of one parent (and one generation) at the same step.

**What a worker asks, shallowest generation first**: a root while roots are left, else the
first generation with a slot to fill -- the other children of a node already promoted, then a
new promotion -- and it waits only when no generation has one (nodes running, none promotable
yet), or stops once the last generation is closed. ASHA asks the deepest promotion first;
shallowest first is chosen for two reasons. With one worker every node is settled before the
next is asked, so a generation is whole before its first promotion: the asynchronous tree *is*
the synchronous one, trial for trial (no worse with one worker, so it is the default
everywhere). With many, early promotions fill what would be waiting at each generation's end,
and the long last segments are asked as a body at the end instead of trickling from the last
roots: in a simulation of the default shape (`tests/test_tree_async.py`, node times varying
2x either way), 8 workers with 8 full runs each were busy 0.97 of the time against 0.92
deepest first and 0.93 synchronous, 16 workers with 4 each 0.93 against 0.83 and 0.86.

**The same budget.** At its close a generation has promoted exactly the synchronous count
(`survivors_of` of its size: the promotions while it was open never exceed `floor(keep x n)`),
so the generation sizes, and what the tree trains, are those of the synchronous tree of the same
shape; only which nodes are promoted may differ (an early promotion is decided on fewer nodes).
Two workers deciding in the same instant may promote one node more than the quota (each
validates its promotion before the other's child exists); the plan counts what exists, and
nothing waits on it.

**GC (`protected`).** The final checkpoints new nodes may still fork from: each promoted node's
while one of its child slots is unfilled or unsettled (a child continued from scratch restarts
at it), and, of the nodes not promoted yet, the best `r(g)` of generation g, where `r(g)` is how
many promotions g may still make at most (`survivors_of` of the most nodes it can have, less
those made). A node behind `r(g)` others that are not promoted can never be promoted (each
promotion takes the best remaining one, and new nodes only push it down), so per generation at
most as many checkpoints are kept as survive it: the disk follows `keep`, not the number of
trials.

**Resume.** The plan reads only the trials; with one worker the order of completion is the
order of the trials, so an interrupted and resumed study asks the same nodes as an
uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from optuna.trial import FrozenTrial

from hpsearch.config import TreeSettings, survivors_of
from hpsearch.search.records import trial_attr
from hpsearch.search.scheduler.tree_plan import Next, Nodes
from hpsearch.search.tree_nodes import Slot


class AsyncTreePlan(Nodes):
    def __init__(
        self, trials: Sequence[FrozenTrial], tree: TreeSettings, direction: str, retries: int
    ) -> None:
        super().__init__(trials, tree, direction, retries)
        G, children = self.generations, tree.children
        by_gen: list[list[Slot]] = [[] for _ in range(G)]
        for slot in sorted(self.slots, key=lambda s: (s[0], -1 if s[1] is None else s[1], s[2])):
            by_gen[slot[0]].append(slot)
        self.by_gen = by_gen
        # the promoted nodes of each generation, in the order of their first child's trial
        self.promoted: list[list[int]] = [[] for _ in range(G)]
        first: dict[int, int] = {}
        for slot, ts in self.slots.items():
            if slot[0] > 0 and slot[1] is not None:
                n = min(t.number for t in ts)
                first[slot[1]] = min(first.get(slot[1], n), n)
        for parent in sorted(first, key=lambda p: first[p]):
            self.promoted[self.nodes.slots[parent][0]].append(parent)
        self.closed: list[bool] = []
        self.final: list[bool] = []  # closed, and no promotion is left to make
        self.bound: list[int] = []  # the most nodes the generation can have
        self.owed: list[list[Slot]] = [[] for _ in range(G)]  # unfilled slots of promoted nodes
        self.ahead: list[list[FrozenTrial]] = []  # not promoted yet, best first
        self.quota: list[int] = []
        for g in range(G):
            if g > 0:
                self.owed[g] = [
                    (g, p, c)
                    for p in self.promoted[g - 1]
                    for c in range(children)
                    if (g, p, c) not in self.slots
                ]
            known = len(by_gen[0]) == tree.roots if g == 0 else self.final[g - 1]
            complete = known and not self.owed[g]
            settled_n = sum(1 for s in by_gen[g] if self.settled[s])
            closed = complete and settled_n == len(by_gen[g])
            self.closed.append(closed)
            if g == 0:
                bound = tree.roots
            elif self.final[g - 1]:
                bound = children * len(self.promoted[g - 1])
            else:
                most = max(len(self.promoted[g - 1]), survivors_of(tree, self.bound[g - 1]))
                bound = children * most
            self.bound.append(max(bound, len(by_gen[g])))
            ranked = self.ranked(by_gen[g])
            done = set(self.promoted[g])
            self.ahead.append([t for t in ranked if t.number not in done])
            if closed:
                quota = survivors_of(tree, len(by_gen[g]))
            else:
                quota = math.floor(tree.keep * settled_n + 1e-9)
            self.quota.append(quota)
            last = g == G - 1
            left = 0 if last else min(max(0, quota - len(done)), len(self.ahead[g]))
            self.final.append(closed and left == 0)

    def promotable(self, g: int) -> list[FrozenTrial]:
        """The nodes of generation g to promote now, best first."""
        if g >= self.generations - 1:
            return []
        left = max(0, self.quota[g] - len(self.promoted[g]))
        return self.ahead[g][:left]

    def candidates(self) -> list[Next]:
        """The slots to fill now, shallowest generation first: the roots left, then for each
        generation the other children of its promoted parents, then its new promotions (best
        first)."""
        filled = {s[2] for s in self.by_gen[0]}
        out = [Next(slot=(0, None, k)) for k in range(self.tree.roots) if k not in filled]
        for g in range(1, self.generations):
            out += [self.next_of(slot) for slot in self.owed[g]]
            out += [Next(slot=(g, t.number, 0), parent=t) for t in self.promotable(g - 1)]
        return out

    def grown(self) -> bool:
        return self.closed[-1]  # closed only once every generation before it is final

    def protected(self) -> set[str]:
        out: set[str] = set()
        children = self.tree.children
        for g in range(self.generations - 1):
            for p in self.promoted[g]:  # until each of its children is settled
                if any(not self.settled.get((g + 1, p, c), False) for c in range(children)):
                    out.add(str(trial_attr(self.by_number[p], "final_checkpoint")))
            if self.final[g]:
                continue
            most = survivors_of(self.tree, self.bound[g])
            left = max(0, most - len(self.promoted[g]))
            out |= {str(trial_attr(t, "final_checkpoint")) for t in self.ahead[g][:left]}
        return out

    def size(self) -> int:
        """The nodes the tree will have as far as is known now (for progress): each
        generation's most."""
        return sum(self.bound)


__all__ = ["AsyncTreePlan"]
