"""The `tree:` section: the fork tree's shape, and the sizes and starting values that follow.

    tree:
      roots: 16                       # generation 0: short runs from scratch, every key sampled
      rungs: [0.25, 0.5, 1.0]         # where generations end, as fractions of the full budget
      keep: 0.25                      # the fraction of a generation that survives a rung
      children: 2                     # forks per survivor; child 0 keeps its parent's values
      probe: 0.05                     # a cooldown probe to rank on, as a fraction of the budget
      promotion: async                # fork a node once it ranks in the best `keep` so far
      hparams: {hidden: 256}          # values of the keys search_space does not sample

Every key is optional. Without `roots`, the tree takes as many as make it spend about
`trials.budget` full runs (`budget.roots_for`; 6 full runs where the file gives no budget);
rungs, keep, children and probe default to the setting chosen on the tuning workloads of
benchmarks/RESULTS.md ("Search efficiency at a budget"): a probe of 0.05 where the study has a
schedule (it ranked the nodes better there than their value at the rung at a constant LR).
`promotion: async` (the default) forks a node as soon as it ranks in the best `keep` of its
generation's nodes settled so far, so no worker waits for a generation; `sync` waits for each
generation to settle and ranks it whole (`search/scheduler/tree_async.py` says the rule).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from typing import Any

from hpsearch.config.budget import (
    DEFAULT_BUDGET,
    describe_tree,
    generation_sizes,
    roots_for,
    survivors_of,
    tree_cost,
)
from hpsearch.config.schema import PROMOTIONS, Param, TreeSettings
from hpsearch.config.values import Bounds, Reader, as_number, fmt, is_number, show

DEFAULTS: dict[str, Any] = {
    "rungs": [0.25, 0.5, 1.0],
    "keep": 0.25,
    "children": 2,
    "probe": 0.05,  # with a schedule to decay (without one: 0, nothing to probe)
    "promotion": "async",
}
MAX_NODES = 100_000  # a tree this size is a typo (children: 1000), not a search


def read_tree(
    r: Reader,
    value: Any,
    space: Mapping[str, Param],
    budget: float | None,
    *,
    scheduled: bool = True,
) -> TreeSettings:
    """The tree; without `tree.roots`, sized to spend about `budget` full runs (None: the
    default budget). `scheduled`: the study has an LR schedule, which a cooldown probe decays
    (without one the probe defaults to 0)."""
    section = r.mapping(value, "tree", ("roots", *DEFAULTS, "hparams"), optional=True)
    defaults = DEFAULTS if scheduled else {**DEFAULTS, "probe": 0.0}
    get = {**defaults, **section}.__getitem__
    tree = TreeSettings(
        roots=r.integer(section["roots"], "tree.roots", Bounds(ge=1)) if "roots" in section else 1,
        rungs=_rungs(r, get("rungs")),
        keep=r.real(get("keep"), "tree.keep", Bounds(gt=0, le=1)),
        children=r.integer(get("children"), "tree.children", Bounds(ge=1)),
        probe=r.real(get("probe"), "tree.probe", Bounds(ge=0, lt=0.5)),
        hparams=_fixed(r, section.get("hparams"), space),
        promotion=r.choice(get("promotion"), "tree.promotion", PROMOTIONS),
    )
    if "roots" not in section:
        tree = _sized(r, tree, DEFAULT_BUDGET if budget is None else budget)
    if sum(generation_sizes(tree)) > MAX_NODES:
        r.fail(
            "tree",
            f"this tree has {sum(generation_sizes(tree))} nodes (more than {MAX_NODES}); "
            "lower tree.roots, tree.keep or tree.children",
        )
    return tree


def _rungs(r: Reader, value: Any) -> tuple[float, ...]:
    value = [as_number(x) for x in value] if isinstance(value, list) else value
    if not isinstance(value, list) or not value or not all(is_number(x) for x in value):
        r.fail(
            "tree.rungs", f"must be a list of fractions such as [0.25, 0.5, 1.0], got {show(value)}"
        )
    rungs = tuple(float(x) for x in value)
    if any(not 0 < x <= 1 for x in rungs) or any(a >= b for a, b in itertools.pairwise(rungs)):
        r.fail(
            "tree.rungs",
            f"must increase strictly within (0, 1], got {show(value)}: each is where a "
            "generation ends, as a fraction of the full budget (trials.epochs)",
        )
    if rungs[-1] != 1.0:
        r.fail(
            "tree.rungs",
            f"must end at 1.0 (the full budget, where the last generation ends), got "
            f"{fmt(rungs[-1])}; add 1.0",
        )
    return rungs


def _fixed(r: Reader, value: Any, space: Mapping[str, Param]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        r.fail("tree.hparams", f"must be a mapping such as {{hidden: 256}}, got {show(value)}")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            r.fail("tree.hparams", f"keys must be strings, got {show(k)}")
        if k in space:
            r.fail(
                f"tree.hparams.{k}",
                f"{k} is sampled by search_space; tree.hparams holds the values of the keys "
                "it does not sample: remove one of them",
            )
        v = as_number(v)
        if v is not None and not isinstance(v, str | int | float | bool | list):
            r.fail(
                f"tree.hparams.{k}", f"must be a number, string, true/false or list, got {show(v)}"
            )
        out[k] = v
    for k in ("lr", "batch_size"):
        if k not in out and k not in space:
            r.fail(
                "tree.hparams",
                f"{k} is neither sampled by search_space nor fixed here; add it to one of them",
            )
    if "batch_size" in out:
        out["batch_size"] = r.integer(out["batch_size"], "tree.hparams.batch_size", Bounds(ge=1))
    return out


def _sized(r: Reader, shape: TreeSettings, budget: float) -> TreeSettings:
    """The shape with as many roots as spend about `budget` full runs."""
    smallest = tree_cost(shape)  # one root
    if budget < 0.75 * smallest:
        r.fail(
            "trials.budget",
            f"{fmt(budget)} full runs is less than the smallest tree of this shape spends "
            f"({describe_tree(shape, None).split(': ', 1)[1]}); raise trials.budget, or give "
            "the tree fewer rungs or children",
        )
    return dataclasses.replace(shape, roots=roots_for(budget, shape), sized=True)


def start_point(tree: TreeSettings, space: Mapping[str, Param]) -> dict[str, Any]:
    """Values for every key: the fixed ones, and a middle point of each sampled range. They
    build the model the study is checked on before anything trains; no node trains on them."""
    out = dict(tree.hparams)
    for name, p in space.items():
        if p.kind == "categorical":
            assert p.choices is not None
            out[name] = p.choices[0]
        elif p.kind == "int":
            out[name] = int((int(p.low or 0) + int(p.high or 0)) // 2)
        elif p.log:
            out[name] = math.sqrt(float(p.low or 0) * float(p.high or 0))
        else:
            out[name] = (float(p.low or 0) + float(p.high or 0)) / 2
    return out


__all__ = ["DEFAULTS", "generation_sizes", "read_tree", "start_point", "survivors_of"]
