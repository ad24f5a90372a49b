"""The rows of a fork tree (a study of mode "tree"): pure, no matplotlib.

Every node is a branch that leaves its parent's row at the rung where it forked. Rows are laid
out as a tidy tree on its side: a node's first child continues on the node's own row, its other
children take the rows below it, one subtree after another. Children (and roots) are ordered
best first: the one on the winner's path, then by how deep their lineage got and how good it is
there, then the ones that never finished, latest first. So the winner's path is one straight
line on the top row, each survivor's children hang right under it, and pruned stubs gather at
the bottom of their parent's subtree. A node with several attempts (a crash and its retry) is
one branch, as everywhere in the plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hpsearch.report.plot.branches import GROUP, color_value, end_of, make_branch
from hpsearch.report.plot.chains import chain_points
from hpsearch.report.plot.model import Branch, Curve, Level
from hpsearch.report.views import TrialView

Chain = list[TrialView]


@dataclass(frozen=True)
class Forest:
    """The tree's structure over chains (indices into the chains list): each chain's parent,
    children, generation and row (1: the top), the winner's path (root first)."""

    parent: tuple[int | None, ...]
    children: tuple[tuple[int, ...], ...]
    generation: tuple[int, ...]
    row: tuple[int, ...]
    path: tuple[int, ...]
    rows: int


def forest(chains: Sequence[Chain], maximize: bool, best_number: int | None) -> Forest:
    """Link the chains by `parent_trial` (a parent that is not drawn, or a loop in bad data,
    makes a root), then lay out their rows."""
    index = {t.number: i for i, c in enumerate(chains) for t in c}
    parent: list[int | None] = []
    for i, c in enumerate(chains):  # the latest attempt that names another chain
        named = [index.get(t.parent_trial) for t in reversed(c) if t.parent_trial is not None]
        parent.append(next((j for j in named if j is not None and j != i), None))
    for i in range(len(chains)):  # cut the edge that closes a loop
        seen, j = {i}, parent[i]
        while j is not None and j not in seen:
            seen.add(j)
            j = parent[j]
        if j is not None:
            parent[i] = None
    children: list[list[int]] = [[] for _ in chains]
    for i, p in enumerate(parent):
        if p is not None:
            children[p].append(i)
    generation = [_generation(i, chains, parent) for i in range(len(chains))]
    path = _path(chains, parent, best_number)
    reach = _reach(chains, children, parent, generation, maximize)
    on_path = set(path)

    def key(i: int) -> tuple[float, ...]:
        last = chains[i][-1]
        v = color_value(last)
        own = math.inf if v is None else (-v if maximize else v)
        got = reach[i]
        if got is None:
            return (i not in on_path, 1, 0.0, 0.0, GROUP.get(last.state, 4), -end_of(last), own)
        return (i not in on_path, 0, -got[0], -got[1] if maximize else got[1], 0.0, 0.0, own)

    row = [0] * len(chains)
    rows = 0
    for root in sorted((i for i in range(len(chains)) if parent[i] is None), key=key):
        stack = [root]  # depth first, iteratively: a long chain of generations is fine
        while stack:
            i = stack.pop()
            kids = sorted(children[i], key=key)
            children[i] = kids
            if not kids:
                rows += 1
                row[i] = rows
            stack.extend(reversed(kids))
    for i in _post_order(children, parent):  # a node sits on its first child's row
        if children[i]:
            row[i] = row[children[i][0]]
    return Forest(
        tuple(parent), tuple(tuple(k) for k in children), tuple(generation), tuple(row),
        path, rows,
    )  # fmt: skip


def _generation(i: int, chains: Sequence[Chain], parent: Sequence[int | None]) -> int:
    """The recorded generation, else the depth below the root."""
    recorded = chains[i][-1].generation
    if recorded is not None:
        return recorded
    depth, j = 0, parent[i]
    while j is not None:
        depth, j = depth + 1, parent[j]
    return depth


def _path(
    chains: Sequence[Chain], parent: Sequence[int | None], best_number: int | None
) -> tuple[int, ...]:
    winner = next((i for i, c in enumerate(chains) for t in c if t.number == best_number), None)
    path: list[int] = []
    while winner is not None:
        path.append(winner)
        winner = parent[winner]
    return tuple(reversed(path))


def _reach(
    chains: Sequence[Chain],
    children: Sequence[Sequence[int]],
    parent: Sequence[int | None],
    generation: Sequence[int],
    maximize: bool,
) -> list[tuple[int, float] | None]:
    """For each node, (the deepest generation with a COMPLETE node in its subtree, the best
    value there), or None when nothing in it completed."""
    reach: list[tuple[int, float] | None] = [None] * len(chains)
    for i in _post_order(children, parent):
        last = chains[i][-1]
        best = None
        if last.state == "COMPLETE" and last.value is not None and math.isfinite(last.value):
            best = (generation[i], last.value)
        for k in children[i]:
            got = reach[k]
            if got is not None and (best is None or _better(got, best, maximize)):
                best = got
        reach[i] = best
    return reach


def _better(a: tuple[int, float], b: tuple[int, float], maximize: bool) -> bool:
    if a[0] != b[0]:
        return a[0] > b[0]
    return a[1] > b[1] if maximize else a[1] < b[1]


def _post_order(children: Sequence[Sequence[int]], parent: Sequence[int | None]) -> list[int]:
    """Every node after all of its descendants."""
    order: list[int] = []
    stack = [i for i, p in enumerate(parent) if p is None]
    while stack:
        i = stack.pop()
        order.append(i)
        stack.extend(children[i])
    return order[::-1]


def tree_rows(
    chains: Sequence[Chain],
    maximize: bool,
    scale: float,
    connector: float,
    best: int | None,
    *,
    trunk: bool,
) -> tuple[tuple[Branch, ...], tuple[Curve, ...], Forest]:
    """The branches in row order (a node before the children that share its row) and their
    curves; a root climbs from the trunk when there is one (a fixed warm-up), else starts on
    its row. A child's curve starts at its parent's last point, so a lineage reads as one
    line in the curves panel."""
    f = forest(chains, maximize, best)
    decided = {f.generation[i] for i, kids in enumerate(f.children) if kids}  # rungs ranked
    on_path = set(f.path)
    branches: dict[int, Branch] = {}
    curves: dict[int, Curve] = {}
    for i in _post_order(f.children, f.parent)[::-1]:  # parents first: children use their curve
        p, y = f.parent[i], -float(f.row[i])
        y_from = (0.0 if trunk else y) if p is None else -float(f.row[p])
        b = make_branch(list(chains[i]), y, scale, connector, best, y_from=y_from)
        survivor = bool(f.children[i])
        branches[i] = replace(
            b,
            generation=f.generation[i],
            parent=None if p is None else chains[p][-1].number,
            survivor=survivor,
            on_path=i in on_path,
            ranked_out=b.state == "COMPLETE" and not survivor and f.generation[i] in decided,
        )
        points = chain_points(list(chains[i]), scale, b.x1)
        before = curves[p].points[-1:] if p is not None else ()
        if before and (not points or before[0][0] < points[0][0]):
            points = (*before, *points)
        curves[i] = Curve(b.number, b.state, points, b.color_value, b.faded, b.marker, b.is_best)
    order = sorted(branches, key=lambda i: (f.row[i], f.generation[i], i))
    return tuple(branches[i] for i in order), tuple(curves[i] for i in order), f


def levels(branches: Sequence[Branch]) -> tuple[Level, ...]:
    """Each generation's span and counts: from where its nodes forked (the earliest first
    attempt) to where the last of them ended."""
    out = []
    for g in sorted({b.generation for b in branches if b.generation is not None}):
        mine = [b for b in branches if b.generation == g]
        out.append(
            Level(
                generation=g,
                x0=min(b.x0 for b in mine),
                x1=max(b.x1 for b in mine),
                nodes=len(mine),
                survivors=sum(b.survivor for b in mine),
                pruned=sum(b.state == "PRUNED" for b in mine),
                complete=sum(b.state == "COMPLETE" for b in mine),
            )
        )
    return tuple(out)
