"""The checkpoint tree as indented text (`hpsearch tree`): a pure function of the tree's rows.

A chain of checkpoints of one trial (or of the warm-up) stays on one level; a branch to another
trial is indented under its fork point. In a fork tree each trial is a node: its header names
its generation and the trial it forked from, and a node whose parent checkpoint has no row is
still shown under its parent trial. Deleted checkpoints are left out unless asked for: after
GC they are most of the tree, and a row that says "deleted" is nothing a user can act on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hpsearch.console import human_bytes
from hpsearch.lineage import WARMUP, CheckpointRow


def tree_text(
    study: str,
    rows: Sequence[CheckpointRow],
    trials: Mapping[int, tuple[str, float | None]],
    *,
    show_all: bool = False,
    nodes: Mapping[int, tuple[int | None, int | None]] | None = None,
) -> str:
    """The tree of `rows`; `trials` maps a trial number to its (state name, value), `nodes`
    (a fork tree's) a trial number to its (generation, parent trial).

    Without `show_all`, deleted checkpoints are not shown, nor is a trial whose checkpoints
    were all deleted unless a shown checkpoint hangs under it (its header then stays, so the
    indentation still says where that checkpoint forked from)."""
    return _Tree(study, rows, trials, show_all, nodes or {}).text()


class _Tree:
    def __init__(
        self,
        study: str,
        rows: Sequence[CheckpointRow],
        trials: Mapping[int, tuple[str, float | None]],
        show_all: bool,
        nodes: Mapping[int, tuple[int | None, int | None]],
    ) -> None:
        self.study, self.rows, self.trials, self.show_all = study, rows, trials, show_all
        self.nodes = nodes
        ids = {r.id for r in rows}
        last: dict[int, CheckpointRow] = {}  # each trial's latest checkpoint
        for r in sorted(rows, key=lambda r: (r.step, r.created)):
            last[r.trial] = r
        self.children: dict[str | None, list[CheckpointRow]] = {}
        for r in rows:
            parent = r.parent if r.parent in ids else None
            forked_from = nodes.get(r.trial, (None, None))[1]
            if parent is None and forked_from in last and forked_from != r.trial:
                # a node whose fork point has no row (a hand-cleaned database): under its
                # parent trial's latest checkpoint, so the tree still says whose child it is
                parent = last[forked_from].id
            self.children.setdefault(parent, []).append(r)
        for kids in self.children.values():
            kids.sort(key=lambda r: (r.trial, r.step, r.created))
        self.visible: dict[str, bool] = {}
        self.lines: list[str] = []

    def text(self) -> str:
        hidden = 0 if self.show_all else sum(r.status == "deleted" for r in self.rows)
        head = f"study {self.study}: {len(self.rows)} checkpoints recorded"
        if hidden:
            head += f", {hidden} deleted not shown (--all shows them)"
        self.lines = [head]
        for root in self.children.get(None, []):
            self._walk(root, 1)
        return "\n".join(self.lines)

    def _shown(self, r: CheckpointRow) -> bool:
        return self.show_all or r.status != "deleted"

    def _any_shown(self, r: CheckpointRow) -> bool:
        """`r` or anything under it is shown (without recursion: a chain can be long)."""
        stack, order = [r], []
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(k for k in self.children.get(node.id, []) if k.id not in self.visible)
        for node in reversed(order):  # every node after all of its descendants
            if node.id not in self.visible:
                below = self.children.get(node.id, [])
                self.visible[node.id] = self._shown(node) or any(
                    self.visible.get(k.id, False) for k in below
                )
        return self.visible[r.id]

    def _who(self, trial: int) -> str:
        if trial == WARMUP:
            return "warm-up"
        name = f"trial {trial}"
        if trial in self.nodes:
            gen, parent = self.nodes[trial]
            name += f" (gen {gen}" + (f", from #{parent})" if parent is not None else ")")
        if trial not in self.trials:
            return name
        state, value = self.trials[trial]
        return f"{name} {state}" + (f" {value:.4g}" if value is not None else "")

    @staticmethod
    def _label(r: CheckpointRow) -> str:
        size = human_bytes(r.nbytes) if r.status == "committed" else r.status
        return f"{r.id}  {r.kind:<6} step {r.step:<7} epoch {r.epoch:<7.4g} {size}"

    def _walk(self, first: CheckpointRow, depth: int) -> None:
        if not self._any_shown(first):
            return
        self.lines.append("  " * depth + f"{self._who(first.trial)}:")
        node: CheckpointRow | None = first
        while node is not None:
            if self._shown(node):
                self.lines.append("  " * (depth + 1) + self._label(node))
            below = self.children.get(node.id, [])
            same = [k for k in below if k.trial == node.trial]
            for k in below:
                if k.trial != node.trial:
                    self._walk(k, depth + 2)
            for k in same[1:]:  # a chain that split within one trial (a continuation)
                self._walk(k, depth + 2)
            node = same[0] if same else None
