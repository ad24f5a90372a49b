"""The rules every scheduler keeps (see `hpsearch.search.scheduler.base.Scheduler`), as a suite to
run over each. Subclass `SchedulerTestCase` in a pytest module under a `Test...` name:

    class TestForkFromBase(SchedulerTestCase):
        classic = False
        def make_scheduler(self, ctx, restorer):
            return ForkFromBase(ctx, restorer)

The suite runs a real (tiny) study through the scheduler: `TinyTask` below, a small regression
on data it makes itself, so it needs no download and trains in well under a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from hpsearch.search.budgets import Budgets
from hpsearch.search.collect import collect_garbage
from hpsearch.search.context import RunContext
from hpsearch.search.control import StopFlag
from hpsearch.search.heartbeat import Heartbeat
from hpsearch.search.jobs import Job
from hpsearch.search.restore import Restorer
from hpsearch.search.saving import Checkpointer
from hpsearch.search.scheduler.base import Scheduler
from hpsearch.search.session import Session
from hpsearch.search.trial import TrialRunner
from hpsearch.task import Task


class TinyTask(Task):
    """y = x @ w + noise, 256 training samples of 8 features; hparams: lr, dropout, batch_size,
    and optionally hidden (16 by default)."""

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        g = torch.Generator().manual_seed(7)
        x = torch.randn(320, 8, generator=g)
        y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(320, 1, generator=g)
        return TensorDataset(x[:256], y[:256]), TensorDataset(x[256:], y[256:])

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        hidden = int(hparams.get("hidden", 16))  # a key a fork cannot change
        return nn.Sequential(nn.Linear(8, hidden), nn.Dropout(float(hparams["dropout"])),
                             nn.Linear(hidden, 1))  # fmt: skip

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=float(hparams["lr"]), momentum=0.9)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        total, n = 0.0, 0
        for x, y in loader:
            total += float(nn.functional.mse_loss(model(x), y, reduction="sum"))
            n += len(y)
        return {"val_loss": total / n}


def tiny_study(
    tmp_path: Path, name: str = "conformance", *, tree: bool = False, promotion: str = "async"
) -> str:
    """A study file for `TinyTask`: a 1-epoch warm-up, 1-epoch trials, 3 trials; with `tree`,
    a fork tree of 3 nodes (2 roots to half the 1-epoch budget, the better one forked once),
    its nodes promoted by the `promotion` rule."""
    doc: dict[str, Any] = {
        "name": name,
        "task": f"{__name__}:TinyTask",
        "seed": 0,
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "checkpoints": {"dir": str(tmp_path / "ckpt"), "every": 0.5, "keep_best": 1},
        "storage": f"sqlite:///{tmp_path}/study.db",
        "warmup": {"epochs": 1, "hparams": {"lr": 0.01, "dropout": 0.0, "batch_size": 32}},
        "trials": {"n": 3, "epochs": 1, "eval_every": 0.5},
        "search_space": {
            "lr": {"float": [1e-3, 1e-1], "log": True},
            "batch_size": {"categorical": [16, 32]},
        },
        "sampler": {"name": "RandomSampler"},
        "pruner": {"name": "NopPruner"},
    }
    if tree:
        del doc["warmup"], doc["trials"]["n"]
        doc["tree"] = {"roots": 2, "rungs": [0.5, 1.0], "keep": 0.5, "children": 1,
                       "promotion": promotion, "hparams": {"dropout": 0.0}}  # fmt: skip
        doc["schedule"] = {"name": "wsd", "decay": 0.25}
    path = os.path.join(tmp_path, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def run_context(session: Session) -> RunContext:
    """A worker's context around `session` without a worker, to drive a scheduler or a trial
    by hand (synchronous saves); `close_context` ends it and the session."""
    budgets = Budgets.of(session, session.samples_per_epoch())
    ckpt = Checkpointer(session.store, session.lineage, async_save=False)
    heartbeat = Heartbeat(session.lineage, session.settings.trials.heartbeat_s)
    return RunContext(session, ckpt, StopFlag(), budgets, heartbeat)


def close_context(ctx: RunContext) -> None:
    ctx.checkpointer.close()
    ctx.heartbeat.close()
    ctx.session.close()


class SchedulerTestCase:
    classic: bool = False  # which twin study the scheduler runs (`--no-fork` for classic)
    tree: bool = False  # the study file grows a fork tree (see `tiny_study`)
    promotion: str = "async"  # the tree's `tree.promotion`

    def make_scheduler(self, ctx: RunContext, restorer: Restorer) -> Scheduler:
        raise NotImplementedError

    # -- a worker's parts around the scheduler ----------------------------------------------

    @pytest.fixture
    def study_path(self, tmp_path: Path) -> str:
        return tiny_study(tmp_path, tree=self.tree, promotion=self.promotion)

    @pytest.fixture
    def worker(self, study_path: str) -> Iterator[tuple[RunContext, Scheduler, TrialRunner]]:
        parts = self._open(study_path)
        try:
            yield parts
        finally:
            close_context(parts[0])

    def _open(self, path: str) -> tuple[RunContext, Scheduler, TrialRunner]:
        ctx = run_context(Session.open(path, classic=self.classic))
        restorer = Restorer(ctx)
        scheduler = self.make_scheduler(ctx, restorer)
        return ctx, scheduler, TrialRunner(ctx, restorer, scheduler)

    # -- the rules --------------------------------------------------------------------------

    def test_budget_is_positive(self, worker: Any) -> None:
        _, scheduler, _ = worker
        b = scheduler.budget
        assert (b.samples or 0) > 0 or (b.steps or 0) > 0

    def test_new_jobs_start_from_pinned_committed_checkpoints(self, worker: Any) -> None:
        ctx, scheduler, runner = worker
        scheduler.prepare()
        for _ in range(3):
            job = scheduler.new_job(3)
            assert isinstance(job, Job) and job.kind == "new" and job.sources == []
            rows = {r.id: r for r in ctx.lineage.checkpoints()}
            if job.parent is not None:
                assert rows[job.parent].status == "committed"
                assert job.parent in scheduler.pins(list(rows.values()))
            out = runner.run(job)
            assert out.state in ("COMPLETE", "PRUNED")
            collect_garbage(ctx.session, "conformance")
            for pinned in scheduler.pins(ctx.lineage.checkpoints()):  # for the trials to come
                assert ctx.session.store.exists(pinned)
        assert scheduler.new_job(3) is None  # the study has its trials

    def test_the_registry_builds_it(self, worker: Any) -> None:
        """The one registry (`scheduler.registry`) picks this scheduler for its study: a worker
        gets it, and every other caller decides by the same record."""
        from hpsearch.search.scheduler import make_scheduler, strategy

        ctx, scheduler, _ = worker
        built = make_scheduler(ctx, Restorer(ctx))
        assert type(built) is type(scheduler)
        assert built.mode == scheduler.mode == strategy(ctx.session).mode

    def test_pins_are_committed_checkpoints(self, worker: Any) -> None:
        ctx, scheduler, _ = worker
        scheduler.prepare()
        rows = ctx.lineage.checkpoints()
        committed = {r.id for r in rows if r.status == "committed"}
        assert scheduler.pins(rows) <= committed

    def test_prepare_again_trains_nothing(self, worker: Any, study_path: str) -> None:
        """A second worker (or a resumed run) prepares from what the first one made, and
        places a trial the first one asked (cut off before it recorded its start) where the
        first one placed it: a takeover starts where the trial would have."""
        ctx, scheduler, _ = worker
        scheduler.prepare()
        before = {r.id for r in ctx.lineage.checkpoints()}
        job = scheduler.new_job(10)
        assert isinstance(job, Job)
        trials = ctx.session.study.get_trials(deepcopy=False)
        asked = next(t for t in trials if t.number == job.number)
        ctx2, scheduler2, _ = self._open(study_path)
        try:
            scheduler2.prepare()
            assert {r.id for r in ctx2.lineage.checkpoints()} == before
            assert scheduler2.parent_of(asked, trials) == job.parent
        finally:
            close_context(ctx2)

    def test_a_restarted_worker_asks_the_same_trials(
        self, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """Sampling is seeded by (seed, trial number): after a restart (a new session and
        scheduler over the same study), the next trial has the params an uninterrupted run
        gives it."""
        seen = []
        for restart in (False, True):
            path = tiny_study(
                tmp_path_factory.mktemp("restart" if restart else "straight"),
                tree=self.tree,
                promotion=self.promotion,
            )
            ctx, scheduler, runner = self._open(path)
            try:
                scheduler.prepare()
                first = scheduler.new_job(3)
                assert isinstance(first, Job)
                runner.run(first)
                if restart:
                    close_context(ctx)
                    ctx, scheduler, runner = self._open(path)
                    scheduler.prepare()
                second = scheduler.new_job(3)
                assert isinstance(second, Job) and second.number == first.number + 1
                seen.append((first.hparams, second.hparams, second.parent is None))
            finally:
                close_context(ctx)
        assert seen[0] == seen[1]
