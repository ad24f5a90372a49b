"""The scheduler conformance suite over both schedulers that exist."""

from __future__ import annotations

from hpsearch.search.context import RunContext
from hpsearch.search.restore import Restorer
from hpsearch.search.scheduler import Scheduler
from hpsearch.search.scheduler.classic import Classic
from hpsearch.search.scheduler.fork_from_base import ForkFromBase
from hpsearch.search.scheduler.tree import Tree
from hpsearch.testing.conformance.scheduler import SchedulerTestCase


class TestForkFromBase(SchedulerTestCase):
    classic = False

    def make_scheduler(self, ctx: RunContext, restorer: Restorer) -> Scheduler:
        return ForkFromBase(ctx, restorer)


class TestClassic(SchedulerTestCase):
    classic = True

    def make_scheduler(self, ctx: RunContext, restorer: Restorer) -> Scheduler:
        return Classic(ctx)


class TestTree(SchedulerTestCase):
    tree = True

    def make_scheduler(self, ctx: RunContext, restorer: Restorer) -> Scheduler:
        return Tree(ctx)
