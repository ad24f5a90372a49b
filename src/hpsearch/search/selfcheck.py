"""`hpsearch check-resume`: prove exact resume on the user's own task.

Train k steps, checkpoint, train k more (the uninterrupted run); then restore the checkpoint in a
fresh Python process, train the same k steps there, and compare both end states tensor by tensor,
plus RNG, data position, scheduler and metrics. The first component that differs is named, with
its likely cause. Anything the task raises is reported as `file: what failed: error`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from typing import Any

import torch

from hpsearch.checkpoint import open_store
from hpsearch.config import load_study_file, warmup_hparams
from hpsearch.config.taskload import load_task, overrides
from hpsearch.errors import HpsearchError
from hpsearch.search.ranks import ranks_of, sizes_of
from hpsearch.training import Budget, Schedule, Trainer
from hpsearch.training.hatches import has_task_state

EXACT, NOT_EXACT = 0, 1  # exit statuses; a usage error is 2, as everywhere


class TaskFailed(HpsearchError):
    """The user's task raised during the self-test: `file: what failed: error`."""

    def __init__(self, path: str, phase: str, error: str, trace: str = "") -> None:
        self.trace = trace
        super().__init__(f"{path}: {phase} failed: {error}")


@contextlib.contextmanager
def _phase(path: str, what: str) -> Iterator[None]:
    """Report anything the task raises while doing `what` as TaskFailed, with no traceback;
    hpsearch's own errors (a bad study file, a task that does not fit) pass as they are."""
    try:
        yield
    except (HpsearchError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise TaskFailed(path, what, _describe(exc), traceback.format_exc()) from exc


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0]
    return first if len(first) <= 400 else first[:400] + "…"


def _trainer(path: str) -> Trainer:
    settings = load_study_file(path, writable=False)
    task = load_task(settings.task, study_path=settings.path)()
    sched = settings.schedule
    hp = warmup_hparams(settings)
    with _phase(path, "Task.datasets()"):
        n = len(task.datasets()[0])  # type: ignore[arg-type]  # a TypeError is reported below
    with _phase(path, "building the run (Task.model, optimizer, scheduler)"):
        return Trainer.create(
            task, hp, seed=settings.seed, device=settings.device,
            schedule=Schedule.of(sched),
            total_samples=4 * n, num_workers=settings.data.num_workers,
            objective=settings.objective.metric, training=settings.training,
        )  # fmt: skip


# Where a difference first shows, and what usually causes it there.
_CAUSES = (
    (
        "rng",
        "something draws random numbers the checkpoint does not hold (an RNG of its own, or "
        "randomness from outside torch, numpy and random)",
    ),
    ("progress", "the data position: a sampler or dataset that keeps state of its own"),
    (
        "scheduler",
        "a scheduler whose state_dict() does not hold all of its state (a closure, a "
        "counter kept elsewhere)",
    ),
    ("metrics", "Task.evaluate is not deterministic, or reads state outside the model"),
    (
        "task",
        "Task.state_dict does not return all of the state the task keeps, or load_state_dict "
        "does not put all of it back",
    ),
    ("scaler", "the fp16 GradScaler's state (a scale the task changes itself?)"),
    ("training", "the training settings (clip, accumulation, precision) were not restored"),
    ("optimizer", "optimizer state kept outside state_dict(), or a nondeterministic kernel"),
    (
        "model",
        "state kept outside the model and optimizer (on the task object, in a global), a "
        "nondeterministic kernel (torch.use_deterministic_algorithms(True) names them), or data "
        "augmentation that draws from an RNG of its own",
    ),
)


def likely_cause(component: str) -> str:
    """What usually makes a resumed run differ first at `component`."""
    for prefix, cause in _CAUSES:
        if component.startswith(prefix):
            return cause
    return "state the checkpoint does not hold"


def first_difference(a: tuple[dict, dict], b: tuple[dict, dict]) -> str | None:
    """Name the first state component where two `Trainer.state()` results differ, or None."""
    (ta, sa), (tb, sb) = a, b
    for group in ("model", "optimizer", "task"):
        if group not in ta and group not in tb:
            continue  # a task without state of its own
        ka, kb = set(ta.get(group, {})), set(tb.get(group, {}))
        if ka != kb:
            return f"{group}: keys differ ({sorted(ka ^ kb)[:5]})"
        for key in sorted(ka):
            x, y = ta[group][key], tb[group][key]
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.cpu(), y.cpu()):
                return f"{group}.{key}"
    for key in (
        "progress", "hparams", "optimizer", "scheduler", "metrics", "model_aliases", "training",
        "scaler", "task_state", "ranks",
    ):  # fmt: skip
        if json.dumps(sa.get(key), sort_keys=True) != json.dumps(sb.get(key), sort_keys=True):
            return key
    for key in sorted(set(sa["rng"]) | set(sb["rng"])):
        if sa["rng"].get(key) != sb["rng"].get(key):
            return f"rng.{key}"
    return None


def check_resume(path: str, *, steps: int = 20) -> tuple[int, str]:
    """Run the self-test; returns (exit status: EXACT or NOT_EXACT, report).

    Raises TaskFailed when the task raises (in this process or in the fresh one), and the usual
    UsageError for a bad study file or a task that does not fit.
    """
    trainer = _trainer(path)
    settings = load_study_file(path, writable=False)
    with tempfile.TemporaryDirectory(prefix="hpsearch-check-") as tmp:
        store = open_store(os.path.join(tmp, "ckpt"))
        with ranks_of(settings, trainer, sizes_of(trainer)):
            with _phase(path, f"training the first {steps} steps"):
                trainer.train(Budget(steps=steps))
            info = store.save(*trainer.state())
            with _phase(path, f"training {steps} steps more (the uninterrupted run)"):
                trainer.train(Budget(steps=2 * steps))
        expected = trainer.state()
        cmd = [sys.executable, "-m", "hpsearch.search.selfcheck", path, store.url, info.id]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        result = _child_result(lines[-1] if lines else "")
        if proc.returncode != 0 or "id" not in result:
            if "failed" in result:
                raise TaskFailed(path, result["failed"], result["error"], result.get("trace", ""))
            raise TaskFailed(
                path, "the fresh process", f"exit status {proc.returncode}", proc.stderr.strip()
            )
        got = store.load(result["id"])
        diff = first_difference(expected, (got.tensors, got.state))
    if diff is None:
        n = sum(t.numel() for g in expected[0].values() for t in g.values())
        return EXACT, (
            f"exact: after {steps} steps, a checkpoint restored in a fresh process and trained "
            f"{steps} more steps equals the uninterrupted run bit for bit ({n} numbers in "
            f"{sum(len(g) for g in expected[0].values())} tensors, RNG, data position, "
            f"scheduler, metrics){_hatches(trainer)}"
        )
    return NOT_EXACT, (
        f"NOT exact: the first component that differs is {diff}. Likely cause: "
        f"{likely_cause(diff)}. See the README's 'What a task must not do'."
    )


def hatches_in_use(trainer: Trainer) -> list[str]:
    """The loop's escape hatches a run uses, as check-resume names them."""
    t, out = trainer.training, []
    if t.clip_norm is not None:
        out.append(f"gradients clipped to norm {t.clip_norm:g}")
    if t.clip_value is not None:
        out.append(f"gradients clipped to +-{t.clip_value:g}")
    if t.accumulate_samples is not None:
        k = t.accumulate_samples // trainer.stream.batch_size
        out.append(f"{t.accumulate_samples} samples per optimizer step ({k} micro-batches)")
    if t.precision != "fp32":
        scaler = " with the GradScaler's state" if trainer.scaler is not None else ""
        out.append(f"{t.precision} autocast{scaler}")
    if overrides(type(trainer.task), "training_step"):
        out.append("Task.training_step")
    if has_task_state(trainer.task):
        n = len(trainer.state()[0].get("task", {}))
        out.append(f"the task's own state (Task.state_dict: {n} tensors and its JSON)")
    return out


def _hatches(trainer: Trainer) -> str:
    used = hatches_in_use(trainer)
    return "; the loop's escape hatches, each restored too: " + ", ".join(used) if used else ""


def _child_result(line: str) -> dict[str, Any]:
    try:
        out = json.loads(line)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _child(path: str, url: str, ckpt_id: str) -> int:
    """Restore and continue in this fresh process; print one JSON line: the saved id, or what
    failed."""
    phase = "restoring the checkpoint in a fresh process"
    try:
        settings = load_study_file(path, writable=False)
        task = load_task(settings.task, study_path=settings.path)()
        store = open_store(url)
        loaded = store.load(ckpt_id)
        trainer = Trainer.restore(
            task, loaded.tensors, loaded.state, device=settings.device,
            num_workers=settings.data.num_workers,
        )  # fmt: skip
        steps = loaded.state["progress"]["step"]
        phase = f"training {steps} steps after the restore"
        with ranks_of(settings, trainer, sizes_of(trainer)):
            trainer.train(Budget(steps=2 * steps))
        phase = "saving the resumed run"
        info = store.save(*trainer.state())
    except Exception as exc:
        failed = {"failed": phase, "error": _describe(exc), "trace": traceback.format_exc()}
        print(json.dumps(failed))
        return 3
    print(json.dumps({"id": info.id}))
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:4]))
