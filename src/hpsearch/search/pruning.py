"""The study's pruner inside a fork tree: wrapped, whatever pruner it is, so that it neither
judges a node on its first reports after the fork, nor a leaf before its cooldown, nor starves a
generation of survivors.

A tree's node reports its evaluations at their index since scratch, so the nodes an Optuna pruner
compares at one step are those of one generation. Two things an Optuna pruner cannot know:

- **A fork's warm-up.** A child whose LR jumped may dip before it gains. A pruner's own warm-up
  (`n_warmup_steps`, `min_resource`, ...) counts from scratch, which a child is long past; the
  wrapper holds every pruner back for the first `grace` reports since the node's fork.
- **The plan.** Successive halving is already a pruner: a rung keeps `survivors_of` nodes of a
  generation. A pruner that cut more than the rest of the generation would leave the rung fewer
  complete nodes than it keeps, and the tree would thin out (a 24-root tree went 24 -> 12 -> 2).
  The wrapper never prunes a node when that would leave fewer nodes of its generation able to
  complete than survive its rung, so the survivors follow the plan. (Two workers deciding at the
  same moment may each see the last spare node: a generation then keeps one node fewer.)
- **The cooldown.** The last generation's nodes are the search's finished models: no rung
  follows, and with a `wsd` schedule their LR decays only at their end, so a pruner would judge
  a high constant LR before the cooldown that makes it pay. Leaves are never pruned. (Measured
  on the tuning workloads of benchmarks/RESULTS.md, "Search efficiency at a budget": the
  MedianPruner pruned 4 of a tree's 6 leaves there and the tree ended worse; at 8 evaluations
  a run it pruned nothing else.)

    study.pruner = TreePruner(optuna.pruners.HyperbandPruner(), settings.tree)
"""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import TreeSettings, generation_sizes, survivors_of
from hpsearch.search.records import trial_attr

__all__ = ["FORK_GRACE", "TreePruner"]

# reports after a fork that are never a reason to prune: the first evaluation after a fork sees
# the jump (of LR, dropout, batch size) before it has had time to pay off
FORK_GRACE = 1


class TreePruner(BasePruner):
    """`inner` (any Optuna pruner), asked only once a node has made more than `grace` reports
    since its fork and only while its generation has more nodes able to complete than survive."""

    def __init__(self, inner: BasePruner, tree: TreeSettings, *, grace: int = FORK_GRACE) -> None:
        self.inner, self.tree, self.grace = inner, tree, grace

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        # a node reports only its own segment's evaluations (a retry re-reports its failed
        # attempt's), so its reports since the fork are its intermediate values
        if len(trial.intermediate_values) <= self.grace:
            return False
        g = trial_attr(trial, "generation")
        if g is not None and (
            int(g) >= len(self.tree.rungs) - 1 or not self._spare(study, trial, int(g))
        ):
            return False
        return bool(self.inner.prune(study, trial))

    def _spare(self, study: optuna.Study, trial: FrozenTrial, g: int) -> bool:
        """Can generation g lose this node and still complete as many as survive its rung?"""
        sizes = generation_sizes(self.tree)  # survivors follow the plan, so sizes do too
        planned = sizes[min(g, len(sizes) - 1)]
        nodes = [
            t
            for t in study.get_trials(deepcopy=False)
            if trial_attr(t, "generation") == g and t.number != trial.number
        ]
        # slots whose node failed are retried (or settle as failed); pruned nodes are out
        lost = sum(1 for t in nodes if t.state == TrialState.PRUNED)
        return planned - lost - 1 >= survivors_of(self.tree, planned)
