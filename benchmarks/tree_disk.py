"""Does a fork tree's disk stay bounded as it grows? The high-water mark of its checkpoints, for
trees of about 10 and 100 nodes.

    python benchmarks/tree_disk.py

Each tree is a real study on the digits MLP (examples/digits.py) in a temporary directory, with
`checkpoints.keep_best: 1`. The high-water mark is exact, not sampled: it is computed from the
checkpoint tree afterwards (every row's size, commit time and deletion time), as the most bytes
committed and not yet deleted at any moment. Three shapes:

- `narrow`:  4 roots, keep 0.25, 4 children, 3 rungs -- 12 nodes;
- `deep`:    the same width, 25 rungs -- 100 nodes (more trials, the same survivors per rung);
- `wide`:    40 roots, keep 0.1, 10 children, 3 rungs -- 120 nodes (ten times the survivors).

What GC keeps of a tree: the survivors' final checkpoints (and, in a generation still running,
the nodes that may yet survive: at most as many as survive it), each running node's newest
checkpoint, and `keep_best`. So the mark follows the survivors per rung, not the node count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import yaml

from hpsearch.search.runner import run_study
from hpsearch.search.session import Session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {
    "narrow": {"roots": 4, "keep": 0.25, "children": 4, "rungs": [0.25, 0.5, 1.0]},
    "deep": {"roots": 4, "keep": 0.25, "children": 4, "rungs": [(i + 1) / 25 for i in range(25)]},
    "wide": {"roots": 40, "keep": 0.1, "children": 10, "rungs": [0.25, 0.5, 1.0]},
}


def study(tmp: str, name: str, shape: dict) -> str:
    doc = {
        "name": name,
        "task": os.path.join(ROOT, "examples", "digits.py") + ":DigitsMLP",
        "seed": 0,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "checkpoints": {"every": 0.25, "keep_best": 1},
        "tree": {**shape, "hparams": {"hidden": 64, "dropout": 0.1}},
        "trials": {"epochs": 2.5, "eval_every": 0.1},
        "schedule": {"name": "wsd", "decay": 0.2},
        "search_space": {
            "lr": {"float": [1e-4, 3e-2], "log": True},
            "batch_size": {"categorical": [32, 64, 128]},
            "weight_decay": {"float": [1e-6, 1e-2], "log": True},
        },
        "sampler": {"name": "TPESampler", "n_startup_trials": 4},
        "pruner": {"name": "NopPruner"},
    }
    path = os.path.join(tmp, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def high_water(path: str) -> tuple[int, int, int]:
    """(bytes, checkpoints) at the mark, and the checkpoints written in all."""
    s = Session.open(path, create=False)
    try:
        rows = [r for r in s.lineage.checkpoints() if r.nbytes > 0]
    finally:
        s.close()
    events = []
    for r in rows:
        events.append((r.created, r.nbytes, 1))
        if r.status in ("deleted", "deleting"):
            events.append((r.updated, -r.nbytes, -1))
    events.sort(key=lambda e: (e[0], e[1] < 0))  # a commit before a deletion at the same time
    live = count = best = best_count = 0
    for _, nbytes, n in events:
        live, count = live + nbytes, count + n
        if live > best:
            best, best_count = live, count
    return best, best_count, len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", action="append", choices=sorted(SHAPES))
    args = p.parse_args()
    print(f"{'shape':<8} {'nodes':>5} {'written':>7} {'high-water':>10} {'ckpts':>5} {'time':>6}")
    for name in args.shape or list(SHAPES):
        tmp = tempfile.mkdtemp(prefix="tree-disk-")
        try:
            path = study(tmp, name, SHAPES[name])
            began = time.monotonic()
            summary = run_study(path)
            seconds = time.monotonic() - began
            peak, ckpts, written = high_water(path)
            nodes = summary.finished
            print(f"{name:<8} {nodes!s:>5} {written:>7} {peak / 1024:>8.0f} KiB {ckpts:>5} "
                  f"{seconds:>5.0f}s")  # fmt: skip
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
