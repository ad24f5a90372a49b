"""The scheduler conformance suite over every scheduler (the fork tree under both promotion
rules), and the registry that picks them."""

from __future__ import annotations

from hpsearch.config import load_study_file
from hpsearch.config.sections import UNBOUNDED
from hpsearch.search.context import RunContext
from hpsearch.search.restore import Restorer
from hpsearch.search.scheduler import Scheduler
from hpsearch.search.scheduler.classic import Classic
from hpsearch.search.scheduler.fork_from_base import ForkFromBase
from hpsearch.search.scheduler.registry import STRATEGIES, strategy_of
from hpsearch.search.scheduler.tree import Tree
from hpsearch.testing.conformance.scheduler import SchedulerTestCase, tiny_study


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


class TestSyncTree(SchedulerTestCase):
    tree = True
    promotion = "sync"

    def make_scheduler(self, ctx: RunContext, restorer: Restorer) -> Scheduler:
        return Tree(ctx)


def test_one_function_picks_every_strategy(tmp_path) -> None:
    """`strategy_of` is the one choice: a `tree:` file runs the tree, a `warmup:` file forks from
    its base, `--no-fork` the classic twin of either (a tree's twin runs until it has spent
    the tree's budget); every record of the registry is one of these."""
    tree = load_study_file(tiny_study(tmp_path, "t", tree=True))
    base = load_study_file(tiny_study(tmp_path, "b"))
    got = {
        (name, classic): strategy_of(s, classic=classic)
        for name, s in (("tree", tree), ("base", base))
        for classic in (False, True)
    }
    assert {k: (v.mode, v.nodes, v.sized, v.restarts) for k, v in got.items()} == {
        ("tree", False): ("tree", True, True, False),
        ("tree", True): ("classic", False, False, True),
        ("base", False): ("fork", False, False, False),
        ("base", True): ("classic", False, False, True),
    }
    assert set(got.values()) == set(STRATEGIES)
    assert got["tree", True].target(tree, None) == UNBOUNDED
    assert (
        got["base", True].target(base, None)
        == base.trials.n
        == got["base", False].target(base, None)
    )
    assert got["tree", False].target(tree, 5) == 5
