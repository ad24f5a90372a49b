"""One GPU per worker: the `CUDA_VISIBLE_DEVICES` each of `hpsearch run --workers N`'s processes
gets, so that worker i trains on its own GPU as `cuda` (its only visible device).

    plan = place_workers(4, device="cuda", gpus=None, inherited=os.environ.get(CUDA_ENV))
    env = worker_env(plan, 2)  # the environment worker 2 is started with

Only `device: cuda` is placed (`cuda:N` names one GPU for every worker; `cpu` none). The GPUs are
the ones this process sees: an inherited CUDA_VISIBLE_DEVICES (indices, UUIDs or MIG ids) is
respected, and `gpus: [0, 1, 3]` / `--gpus 0,1,3` pick among them by position. With fewer GPUs
than workers, the workers share them round-robin (worker i on GPU i mod k), with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hpsearch.errors import UsageError

CUDA_ENV = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Placement:
    devices: tuple[str, ...]  # worker i's CUDA_VISIBLE_DEVICES (worker 0: this process)
    warning: str | None = None  # fewer GPUs than workers: they share

    def describe(self) -> str:
        shown = ", ".join(f"worker {i} on GPU {d}" for i, d in enumerate(self.devices))
        return f"{CUDA_ENV} per worker: {shown}"


def parse_gpus(text: str) -> tuple[int, ...]:
    """`--gpus 0,1,3` as indices."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise UsageError(
            f"--gpus {text}: must be GPU indices separated by commas, e.g. --gpus 0,1,3"
        )
    return tuple(int(p) for p in parts)


def visible_gpus(inherited: str | None, count: Callable[[], int]) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries: the inherited list (CUDA
    stops reading it at the first empty or -1 entry), else 0 .. count()-1."""
    if inherited is None:
        return [str(i) for i in range(count())]
    out = []
    for entry in inherited.split(","):
        entry = entry.strip()
        if not entry or entry == "-1":
            break
        out.append(entry)
    return out


def place_workers(
    workers: int,
    *,
    device: str,
    gpus: Sequence[int] | None,
    inherited: str | None,
    count: Callable[[], int] | None = None,
    per_worker: int = 1,
) -> Placement | None:
    """Worker i's GPU, for `workers` processes; None when nothing is placed (a device other than
    `cuda`, or one worker and no `gpus`: then the environment is left as it is). A trial of
    `per_worker` ranks (`trials.processes`) takes that many GPUs: worker i gets the i-th group
    of them, its rank r the group's r-th."""
    if device != "cuda":
        if gpus is not None:
            raise UsageError(
                f"--gpus places each worker on a GPU, which needs device: cuda in the study "
                f"file, got device: {device}"
            )
        return None
    if workers == 1 and gpus is None:
        return None
    visible = visible_gpus(inherited, count or _cuda_count)
    where = f"{CUDA_ENV}={inherited}" if inherited is not None else "torch.cuda.device_count()=0"
    if not visible:
        raise UsageError(
            f"device: cuda with {workers} worker(s), but this process sees no GPU ({where}); "
            "run on a machine with a GPU, or set device: cpu"
        )
    chosen = visible
    if gpus is not None:
        bad = [g for g in gpus if g >= len(visible)]
        if bad:
            raise UsageError(
                f"gpus: {', '.join(map(str, bad))} is not a GPU this process sees: it sees "
                f"{len(visible)} ({', '.join(f'{i}={d}' for i, d in enumerate(visible))}); "
                "list indices below that"
            )
        chosen = [visible[g] for g in gpus]
    k = per_worker
    if len(chosen) < k:
        raise UsageError(
            f"trials.processes: {k} trains each trial on {k} GPUs, one per rank, and the "
            f"workers have {len(chosen)} ({', '.join(chosen)}); give as many GPUs or fewer "
            "processes"
        )
    groups = [",".join(chosen[j * k : (j + 1) * k]) for j in range(len(chosen) // k)]
    devices = tuple(groups[i % len(groups)] for i in range(workers))
    warning = None
    if workers > len(groups):
        what, each = ("GPU(s)", "GPU") if k == 1 else (f"groups of {k} GPUs", "group")
        warning = (
            f"warning: {workers} workers on {len(groups)} {what} ({', '.join(groups)}): they "
            f"share them round-robin (worker i on {each} i mod {len(groups)}), with each "
            f"GPU's memory; use --workers {len(groups)} for one each"
        )
    return Placement(devices, warning)


def worker_env(
    plan: Placement | None, i: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment worker `i` is started with: `base` (this process's) with its GPU."""
    env = dict(os.environ if base is None else base)
    if plan is not None:
        env[CUDA_ENV] = plan.devices[i]
    return env


def _cuda_count() -> int:
    import torch

    # through NVML, without starting CUDA here: this process is worker 0 and narrows its own
    # CUDA_VISIBLE_DEVICES afterwards, which CUDA reads only when it starts
    return int(torch.cuda.device_count())
