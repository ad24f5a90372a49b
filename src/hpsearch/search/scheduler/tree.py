"""The fork tree: searched roots trained from scratch, then generations of children forked from
the survivors of each rung, every node an ordinary Optuna trial (see `tree_plan`).

Roots sample every search-space key; a child samples only the keys a fork can change (the others,
a hidden size say, are its parent's) and child 0 keeps its parent's values: it simply continues.
Every node's LR schedule spans the full budget, so with the `wsd` schedule a node forked in the
stable phase trains at its own LR and only the last generation decays. Children of one
generation start at the same step, so the pruner compares like with like.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpsearch import failpoints
from hpsearch.config import FORKABLE, TreeSettings, suggest, trial_hparams
from hpsearch.lineage import CheckpointRow
from hpsearch.search import asking
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search.context import RunContext
from hpsearch.search.control import UnusableCheckpoint
from hpsearch.search.jobs import WAIT, Job, Wait
from hpsearch.search.records import PREFIX, Mode, trial_attr
from hpsearch.search.scheduler.pins import tree_pins
from hpsearch.search.scheduler.tree_plan import Next, Slot, TreePlan
from hpsearch.training import Budget


class Tree:
    mode: Mode = "tree"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        tree = ctx.settings.tree
        if tree is None:
            raise ValueError("the fork tree needs the study file's tree settings")
        self.tree: TreeSettings = tree
        self.full = ctx.budgets.trial_samples
        self.rungs = [round(f * self.full) for f in tree.rungs]
        self._said: set[int] = set()  # damaged nodes already reported

    @property
    def budget(self) -> Budget:
        return Budget(samples=self.full)  # a node's segment is set by `place`

    def prepare(self) -> None:
        pass  # the roots are the first trials

    def parent_of(self, t: FrozenTrial, trials: Sequence[FrozenTrial]) -> str | None:
        """A node's parent follows from its place in the tree: a root starts from scratch, a
        child at its parent's final checkpoint (pinned by the caller), whichever worker asks
        and however its first attempt was cut off."""
        plan = self.plan(trials)
        slot = plan.nodes.slots.get(t.number)
        if slot is None:
            why = plan.damaged.get(t.number, "it holds no place in the tree")
            raise UnusableCheckpoint(f"trial {t.number} cannot start: {why}")
        if slot[1] is None:
            return None
        parent = plan.by_number[slot[1]]
        final = trial_attr(parent, "final_checkpoint")
        if parent.state != TrialState.COMPLETE or not isinstance(final, str) or not final:
            raise UnusableCheckpoint(
                f"trial {t.number} forks from trial {parent.number}, which has no final "
                f"checkpoint ({parent.state.name})"
            )
        if trial_attr(parent, "final_checkpoint_deleted"):
            raise UnusableCheckpoint(
                f"trial {t.number} forks from trial {parent.number}'s final checkpoint "
                f"{final}, which garbage collection deleted"
            )
        return final

    def place(self, job: Job) -> None:
        """Where a node's segment ends, and what its schedule spans and its probe costs."""
        g = job.generation if job.generation is not None else 0
        job.until, job.total = self.rungs[g], self.full
        last = g == len(self.rungs) - 1
        job.probe = 0 if last else round(self.tree.probe * self.full)

    def plan(self, trials: Sequence[FrozenTrial] | None = None) -> TreePlan:
        s = self.ctx.settings
        if trials is None:
            trials = self.ctx.session.study.get_trials(deepcopy=False)
        plan = TreePlan(trials, self.tree, s.objective.direction, s.trials.retries)
        for number, why in plan.damaged.items():  # said once a run: it is data, not news
            if number not in self._said:
                self._said.add(number)
                self.ctx.say(
                    f"warning: trial {number}: its place in the fork tree is damaged ({why}); "
                    "it is left out of the tree and of the winner"
                )
        return plan

    def size(self, trials: Sequence[FrozenTrial]) -> int:
        """The tree's nodes as planned now: the generations not settled yet at full size, those
        after a generation with fewer survivors (too many pruned) smaller."""
        return self.plan(trials).size()

    def _forkable(self) -> set[str]:
        """The keys a child may change: the registry's (lr, weight decay, dropout, batch size,
        ...) and those the task reads from its hparams at every step (`forkable_hparams`); its
        other keys (a hidden size, or what `apply_hparams` would have to rebuild) stay as the
        root sampled them."""
        task = self.ctx.session.task()
        return set(FORKABLE) | set(getattr(task, "forkable_hparams", ()))

    def pins(self, rows: Sequence[CheckpointRow]) -> set[str]:
        return self.plan().protected()

    def new_job(self, target: int) -> Job | Wait | None:
        return asking.with_ask_lease(self.ctx, self._ask)

    def _ask(self) -> Job | Wait | None:
        plan = self.plan()
        placed, strays = _waiting(plan)
        if placed:  # enqueued by a worker that died before it asked: ask it now
            orphan = placed[0]
            slot = plan.nodes.slots[orphan.number]
            parent = plan.by_number.get(slot[1]) if slot[1] is not None else None
            next_ = Next(slot=slot, parent=parent)
            return self._ask_slot(next_, enqueued=bridge.trial_id(orphan))
        nxt = plan.next()
        if nxt.wait:
            return WAIT
        strays = asking.valid_waiting(self.ctx, strays)
        if strays and nxt.slot is not None and nxt.slot[0] == 0:
            # a trial enqueued by hand (Optuna's `enqueue_trial`) is a root: it takes the next
            # root's slot; its enqueued values are kept and the rest is sampled, as for any root
            place = {"generation": 0, "parent_trial": None, "child": nxt.slot[2]}
            tid = bridge.trial_id(strays[0])
            bridge.set_waiting_user_attrs(
                self.ctx.session.study, tid, {PREFIX + k: v for k, v in place.items()}
            )
            return self._ask_slot(nxt, enqueued=tid)
        for stray in strays:  # the roots are taken: no place left for it (and none would ask it)
            reason = (
                "enqueued by hand after the fork tree's roots were asked: a tree takes "
                "hand-enqueued trials only as roots (enqueue them before the study starts)"
            )
            bridge.fail_waiting(
                self.ctx.session.study, bridge.trial_id(stray),
                {PREFIX + "fail_kind": "unplaced", PREFIX + "fail_reason": reason},
            )  # fmt: skip
            self.ctx.say(f"trial {stray.number}: not run: {reason}")
        if nxt.slot is None:
            return None
        return self._ask_slot(nxt)

    def _ask_slot(self, nxt: Next, *, enqueued: int | None = None) -> Job | Wait:
        """Ask for the node of `nxt.slot`. It is enqueued with its place in the tree (and a
        child's inherited params) in one write, then asked for by its id under the ask lease:
        a worker that dies between the two leaves a waiting trial that says which slot it
        fills, which the next ask takes (`_orphan`), never a trial that belongs nowhere.
        `enqueued`: the id of a waiting trial that has the slot already."""
        ctx, study = self.ctx, self.ctx.session.study
        slot: Slot = nxt.slot  # type: ignore[assignment]
        g, parent_trial, child = slot
        parent_ckpt = trial_attr(nxt.parent, "final_checkpoint") if nxt.parent else None
        if enqueued is None:
            fixed = (
                inherited(nxt.parent.params, self._forkable(), keep_all=child == 0)
                if nxt.parent is not None
                else {}
            )
            place = {"generation": g, "parent_trial": parent_trial, "child": child}
            enqueued = bridge.enqueue(study, fixed, {PREFIX + k: v for k, v in place.items()})
            failpoints.passed("node.enqueued")
        ctx.pin([parent_ckpt])
        trial = asking.ask_waiting(ctx, enqueued)
        if trial is None:  # popped by a process outside the ask lease: look again
            return WAIT
        failpoints.passed("node.asked")
        params = suggest(trial, ctx.settings)  # the enqueued ones come back as they were
        failpoints.passed("node.sampled")
        token = ctx.lineage.start_attempt(trial.number)
        hp = trial_hparams(ctx.settings, params)
        job = Job(trial.number, bridge.trial_id(trial), hp, "new", token,
                  parent=parent_ckpt, generation=g, handle=trial)  # fmt: skip
        self.place(job)
        return job


def _waiting(plan: TreePlan) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """The waiting trials, oldest first: those that hold a place in the tree (enqueued by a
    worker that died before asking for them; asks happen under the ask lease, so no other worker
    is between the two now), and those that hold none (enqueued through Optuna by hand). A
    waiting trial whose place is damaged is neither: it stays, reported."""
    waiting = sorted(
        (t for t in plan.by_number.values() if t.state == TrialState.WAITING),
        key=lambda t: t.number,
    )
    placed = [t for t in waiting if t.number in plan.nodes.slots]
    strays = [t for t in waiting if t.number not in plan.nodes.slots]
    return placed, [t for t in strays if t.number not in plan.damaged]


def inherited(
    params: dict[str, Any], forkable: Collection[str], *, keep_all: bool
) -> dict[str, Any]:
    """The values a child takes from its parent: all of them for the child that continues,
    else the keys a fork cannot change (the sampler proposes the rest)."""
    if keep_all:
        return dict(params)
    return {k: v for k, v in params.items() if k not in forkable}


__all__ = ["Tree", "inherited", "tree_pins"]
