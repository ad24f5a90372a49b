"""`hpsearch check-resume`: prove exact resume on the user's own task.

Train k steps, checkpoint, train k more (the uninterrupted run); then restore the checkpoint in a
fresh Python process, train the same k steps there, and compare both end states tensor by tensor,
plus RNG, data position, scheduler and metrics. The first component that differs is named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import torch

from hpsearch.checkpoint import open_store
from hpsearch.search.studyfile import load_study_file, warmup_hparams
from hpsearch.search.taskload import load_task
from hpsearch.training import Budget, Schedule, Trainer


def _trainer(path: str) -> tuple[Trainer, Any]:
    settings = load_study_file(path)
    task = load_task(settings.task, study_path=settings.path)()
    sched = settings.schedule
    hp = warmup_hparams(settings)
    n = len(task.datasets()[0])
    trainer = Trainer.create(
        task, hp, seed=settings.seed, device=settings.device,
        schedule=Schedule(sched.name, sched.warmup, sched.final) if sched else None,
        total_samples=4 * n, num_workers=settings.data.num_workers,
    )  # fmt: skip
    return trainer, settings


def first_difference(a: tuple[dict, dict], b: tuple[dict, dict]) -> str | None:
    """Name the first state component where two `Trainer.state()` results differ, or None."""
    (ta, sa), (tb, sb) = a, b
    for group in ("model", "optimizer"):
        ka, kb = set(ta[group]), set(tb[group])
        if ka != kb:
            return f"{group}: keys differ ({sorted(ka ^ kb)[:5]})"
        for key in sorted(ka):
            x, y = ta[group][key], tb[group][key]
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.cpu(), y.cpu()):
                return f"{group}.{key}"
    for key in ("progress", "hparams", "optimizer", "scheduler", "metrics"):
        if json.dumps(sa.get(key), sort_keys=True) != json.dumps(sb.get(key), sort_keys=True):
            return key
    for key in sorted(set(sa["rng"]) | set(sb["rng"])):
        if sa["rng"].get(key) != sb["rng"].get(key):
            return f"rng.{key}"
    return None


def check_resume(path: str, *, steps: int = 20) -> tuple[bool, str]:
    """Run the self-test; returns (exact, report)."""
    trainer, _ = _trainer(path)
    with tempfile.TemporaryDirectory(prefix="hpsearch-check-") as tmp:
        store = open_store(os.path.join(tmp, "ckpt"))
        trainer.train(Budget(steps=steps))
        tensors, state = trainer.state()
        info = store.save(tensors, state)
        trainer.train(Budget(steps=2 * steps))
        expected = trainer.state()
        cmd = [sys.executable, "-m", "hpsearch.search.selfcheck", path, store.url, info.id]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return False, f"the resumed process failed:\n{proc.stderr.strip()}"
        got = store.load(proc.stdout.strip().splitlines()[-1])
        diff = first_difference(expected, (got.tensors, got.state))
    if diff is None:
        n = sum(t.numel() for g in expected[0].values() for t in g.values())
        return True, (
            f"exact: after {steps} steps, a checkpoint restored in a fresh process and trained "
            f"{steps} more steps equals the uninterrupted run bit for bit ({n} numbers in "
            f"{sum(len(g) for g in expected[0].values())} tensors, RNG, data position, "
            "scheduler, metrics)"
        )
    return False, (
        f"NOT exact: the first component that differs is {diff}. Look for randomness outside "
        "torch/numpy/random, state kept outside the model and optimizer, or nondeterministic "
        "kernels (torch.use_deterministic_algorithms)."
    )


def _child(path: str, url: str, ckpt_id: str) -> None:
    settings = load_study_file(path)
    task = load_task(settings.task, study_path=settings.path)()
    store = open_store(url)
    loaded = store.load(ckpt_id)
    trainer = Trainer.restore(
        task, loaded.tensors, loaded.state, device=settings.device,
        num_workers=settings.data.num_workers,
    )  # fmt: skip
    steps = loaded.state["progress"]["step"]
    trainer.train(Budget(steps=2 * steps))
    info = store.save(*trainer.state())
    print(info.id)


if __name__ == "__main__":
    _child(*sys.argv[1:4])
