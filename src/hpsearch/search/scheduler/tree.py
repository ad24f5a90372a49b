"""The fork tree: searched roots trained from scratch, then generations of children forked from
the survivors of each rung, every node an ordinary Optuna trial (see `tree_plan`).

Roots sample every search-space key; a child samples only the keys a fork can change (the others,
a hidden size say, are its parent's) and child 0 keeps its parent's values: it simply continues.
Every node's LR schedule spans the full budget, so with the `wsd` schedule a node forked in the
stable phase trains at its own LR and only the last generation decays. Children of one
generation start at the same step, so the pruner compares like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
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
from hpsearch.search.scheduler.tree_plan import Next, Nodes, Slot, plan_of
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
        self._cached: tuple[Any, Nodes] | None = None  # (the trials' signature, their plan)

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

    def plan(self, trials: Sequence[FrozenTrial] | None = None) -> Nodes:
        """The study's plan over `trials` (None: read now). Worked out again only when the
        trials changed since the last look (`_signature`): a worker that waits looks often."""
        s = self.ctx.settings
        if trials is None:
            trials = self.ctx.session.study.get_trials(deepcopy=False)
        sig = _signature(trials)
        if self._cached is not None and self._cached[0] == sig:
            return self._cached[1]
        plan = plan_of(trials, self.tree, s.objective.direction, s.trials.retries)
        self._cached = (sig, plan)
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

    # -- asking: one slot at a time, no study-wide lease -------------------------------------

    def new_job(self, target: int) -> Job | Wait | None:
        """The next node, or WAIT while nothing can start, or None once the tree is grown.

        Each slot is filled under a lease of its own (`asking.slot_lease`), taken without
        waiting: a worker that finds a slot's lease held tries the next slot of the plan, so
        workers asking at once fill different slots rather than queue for one study-wide lease.
        Under the slot's lease the plan is read again (the trials read is incremental) and the
        slot is filled only if it is still to fill: once a slot's trial exists, every later look
        sees it, so a slot is filled once."""
        plan = self.plan()
        placed, strays = _waiting(plan)
        if strays and not any(n.slot is not None and n.slot[0] == 0 for n in plan.candidates()):
            self._unplaced(strays)
        for orphan in placed:  # enqueued by a worker that died before it asked: ask it now
            job = self._under_slot(plan.nodes.slots[orphan.number], self._orphan, orphan.number)
            if job is not None:
                return job
        candidates = plan.candidates()
        for nxt in candidates:
            assert nxt.slot is not None
            job = self._under_slot(nxt.slot, self._fill, nxt.slot)
            if job is not None:
                return job
        if candidates or placed or not plan.grown():
            return WAIT  # slots another worker is filling, or running nodes to settle
        return None

    def _under_slot(
        self, slot: Slot, fill: Callable[[Nodes, Any], Job | None], arg: Any
    ) -> Job | None:
        """`fill(plan, arg)` on a fresh plan, holding `slot`'s lease; None when another worker
        holds it."""
        lin, key = self.ctx.lineage, asking.slot_lease(slot)
        if not lin.take_lease(key, self.ctx.presence, ttl_s=asking.ASK_LEASE_S):
            return None
        try:
            return fill(self.plan(), arg)
        finally:
            lin.release_lease(key, self.ctx.presence)

    def _fill(self, plan: Nodes, slot: Slot) -> Job | None:
        """Fill `slot` if the plan, read under its lease, still asks for it; a root takes a
        trial enqueued by hand first."""
        nxt = next((n for n in plan.candidates() if n.slot == slot), None)
        if nxt is None:
            return None  # filled, or no longer wanted, since our look
        if slot[0] == 0:
            strays = asking.valid_waiting(self.ctx, _waiting(plan)[1])
            if strays:
                # a trial enqueued by hand (Optuna's `enqueue_trial`) is a root: it takes this
                # root's slot; its enqueued values are kept and the rest is sampled
                place = {"generation": 0, "parent_trial": None, "child": slot[2]}
                tid = bridge.trial_id(strays[0])
                bridge.set_waiting_user_attrs(
                    self.ctx.session.study, tid, {PREFIX + k: v for k, v in place.items()}
                )
                return self._ask_slot(nxt, enqueued=tid)
        return self._ask_slot(nxt)

    def _orphan(self, plan: Nodes, number: int) -> Job | None:
        """Ask the waiting node `number` (its enqueuer died, or is gone from its slot's lease
        without asking it) if it is still waiting."""
        t = plan.by_number.get(number)
        if t is None or t.state != TrialState.WAITING or number not in plan.nodes.slots:
            return None
        return self._ask_slot(plan.next_of(plan.nodes.slots[number]), enqueued=bridge.trial_id(t))

    def _unplaced(self, strays: list[FrozenTrial]) -> None:
        """Trials enqueued by hand once the roots are all asked: no place is left for them."""
        reason = (
            "enqueued by hand after the fork tree's roots were asked: a tree takes "
            "hand-enqueued trials only as roots (enqueue them before the study starts)"
        )
        for stray in asking.valid_waiting(self.ctx, strays):
            bridge.fail_waiting(
                self.ctx.session.study, bridge.trial_id(stray),
                {PREFIX + "fail_kind": "unplaced", PREFIX + "fail_reason": reason},
            )  # fmt: skip
            self.ctx.say(f"trial {stray.number}: not run: {reason}")

    def _ask_slot(self, nxt: Next, *, enqueued: int | None = None) -> Job | None:
        """Ask for the node of `nxt.slot`, holding the slot's lease. It is enqueued with its
        place in the tree (and a child's inherited params) in one write, then asked for by its
        id: a worker that dies between the two leaves a waiting trial that says which slot it
        fills, which the next look asks (`_orphan`), never a trial that belongs nowhere; one
        that dies after asking leaves a trial with no attempt, which a takeover claims only
        under the slot's lease (`Worker._takeover`), so never while its asker lives.
        `enqueued`: the id of a waiting trial that has the slot already. None when another
        process asked that trial first (it runs it)."""
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
        if trial is None:
            return None
        failpoints.passed("node.asked")
        params = suggest(trial, ctx.settings)  # the enqueued ones come back as they were
        failpoints.passed("node.sampled")
        token = ctx.lineage.start_attempt(trial.number)
        hp = trial_hparams(ctx.settings, params)
        job = Job(trial.number, bridge.trial_id(trial), hp, "new", token,
                  parent=parent_ckpt, generation=g, handle=trial)  # fmt: skip
        self.place(job)
        return job


def _signature(trials: Sequence[FrozenTrial]) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """What the plan reads that can change, in brief: a finished trial never changes what the
    plan reads (Optuna's cache keeps it as it finished), so the number of trials and each
    unfinished trial's state and attributes say whether the plan is still the same."""
    return len(trials), tuple(
        (t.number, t.state.value, len(t.user_attrs)) for t in trials if not t.state.is_finished()
    )


def _waiting(plan: Nodes) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """The waiting trials, oldest first: those that hold a place in the tree (enqueued by a
    worker that died before asking for them, or that is asking for them now: then it holds the
    slot's lease), and those that hold none (enqueued through Optuna by hand). A waiting trial
    whose place is damaged is neither: it stays, reported."""
    waiting = sorted(
        (t for t in plan.by_number.values() if t.state == TrialState.WAITING),
        key=lambda t: t.number,
    )
    # a waiting retry is the worker's to adopt (it continues its failed node's checkpoints)
    placed = [t for t in waiting if t.number in plan.nodes.slots
              and trial_attr(t, "retry_of") is None]  # fmt: skip
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


__all__ = ["Tree", "inherited"]
