"""Data-parallel trials on 2 GPUs with NCCL: exact resume and fork, and the step time (issue 25).

    PYTHONPATH=src python benchmarks/ranks_nccl.py [--out DIR] [--device cuda|cpu] [--quick]

One prepared script for a machine with 2 or more GPUs. It runs every training in a fresh process
of its own (rank 0, which starts its follower rank through `Team`, as a trial does), on `cuda`
(rank r on the r-th visible GPU; NCCL sums the gradients, gloo carries the control messages), for
an MLP with dropout and an LR scheduler (`examples/digits.py`) and a CNN with BatchNorm and
random-shift augmentation (`examples/digits_cnn.py`), and checks, bit for bit (after a control:
the comparison reports one flipped bit in a weight and in rank 1's RNG):

1. resume: a 2-rank run checkpointed mid-way and continued from that checkpoint in a fresh
   process, with a new Team, ends with the same model, optimizer, RNG of every rank, progress
   and metrics as the uninterrupted run;
2. fork: the mid-way checkpoint forked to another batch size (odd: the ranks' shares differ by
   one sample) and another LR and trained on 2 ranks ends the same when the fork is done again
   in another fresh process, and when it is itself checkpointed mid-way and resumed;
3. 2 ranks compute what 1 rank does, up to rounding: with dropout 0, the first steps' training
   losses of a 1-rank and a 2-rank run from the same seed agree within 1e-4 (relative);
4. the checkpoint of a 2-rank state holds the same tensor files, byte for byte in size, as a
   1-rank one: the replicated model and optimizer are written once.

Then it prints the step time of 2 ranks against 1 on the same global batch (a 1.1M and a 17M
parameter MLP, and a char transformer), measured alternately, median of `--repeats`.

Determinism: every process (rank 0 and its follower, which imports this file to build the task)
sets `CUBLAS_WORKSPACE_CONFIG=:4096:8` before CUDA starts and calls
`torch.use_deterministic_algorithms(True)` with cuDNN's benchmark mode off. NCCL's all-reduce of
two ranks adds two numbers per element, which gives the same bits whatever NCCL's algorithm
(a + b = b + a in floating point); with more ranks its result is fixed for a fixed buffer
layout, world size and algorithm choice (a failure says to try NCCL_ALGO=Ring).

Exit status: 0 every check passed; 1 a check failed (each difference is printed); 77 skipped
(fewer than 2 GPUs visible: nothing was checked). `--device cpu` runs the same checks on the CPU
with gloo (to try the script without GPUs), and times the small MLP only. Writes
DIR/ranks_nccl.json.
"""

from __future__ import annotations

import os

# before torch initialises CUDA, in this process and in every process it starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (os.path.join(ROOT, "examples"), os.path.join(ROOT, "src")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from chars import CharLM  # noqa: E402
from digits import DigitsMLP  # noqa: E402
from digits_cnn import DigitsCNN  # noqa: E402

HERE = os.path.abspath(__file__)
SKIPPED = 77


def deterministic() -> None:
    """PyTorch's deterministic settings (the env variable is set at this module's import)."""
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


class CheckMLP(DigitsMLP):
    """The digits MLP, in a process that runs deterministically (the follower builds it)."""

    def __init__(self) -> None:
        deterministic()


class CheckCNN(DigitsCNN):
    """The digits CNN with BatchNorm and augmentation, likewise."""

    def __init__(self) -> None:
        deterministic()


class CheckChars(CharLM):
    """The char transformer (for the timing only), likewise."""

    def __init__(self) -> None:
        deterministic()


# name: (class in this file, hparams, steps, checkpoint/eval every, fork changes)
CHECKS: dict[str, tuple[str, dict[str, Any], int, int, dict[str, Any]]] = {
    "mlp": ("CheckMLP", {"lr": 2e-3, "dropout": 0.2, "batch_size": 64, "hidden": 256,
                         "weight_decay": 1e-3, "lr_warmup_steps": 5}, 24, 8,
            {"batch_size": 37, "lr": 1e-3}),
    "cnn-batchnorm": ("CheckCNN", {"lr": 2e-3, "dropout": 0.1, "batch_size": 64, "width": 16,
                                   "weight_decay": 1e-4}, 24, 8, {"batch_size": 37, "lr": 1e-3}),
}  # fmt: skip
# name: (class in this file, hparams, timed steps per call)
TIMED: dict[str, tuple[str, dict[str, Any], int]] = {
    "MLP h1024 b128": ("CheckMLP", {"lr": 1e-3, "dropout": 0.1, "batch_size": 128,
                                    "hidden": 1024, "weight_decay": 1e-4}, 40),
    "MLP h4096 b1024": ("CheckMLP", {"lr": 1e-3, "dropout": 0.1, "batch_size": 1024,
                                     "hidden": 4096, "weight_decay": 1e-4}, 20),
    "chars d128 l4 b64": ("CheckChars", {"lr": 1e-3, "dropout": 0.1, "batch_size": 64,
                                         "d_model": 128, "layers": 4, "heads": 4,
                                         "weight_decay": 1e-2}, 20),
}  # fmt: skip


# -- one training, in a process of its own (`--role train JSON`) -----------------------------


def train_role(job: dict[str, Any]) -> dict[str, Any]:
    """Build or restore a trainer, train it on `job["ranks"]` ranks, save into the store at
    each checkpoint; returns the ids saved by step and the training losses."""
    from hpsearch.checkpoint import open_store
    from hpsearch.training import Budget, Every, Hooks, Trainer, fork
    from hpsearch.training.team import Team

    deterministic()
    torch.set_num_threads(1)
    spec = f"{HERE}:{job['task']}"
    task = globals()[job["task"]]()
    datasets = task.datasets()
    store = open_store(job["store"])
    device = job["device"]
    if job.get("start"):
        loaded = store.load(job["start"])
        trainer = Trainer.restore(task, loaded.tensors, loaded.state, device=device,
                                  datasets=datasets)  # fmt: skip
    else:
        trainer = Trainer.create(task, job["hparams"], seed=0, device=device, datasets=datasets)
    if job.get("fork"):
        fork(trainer, job["fork"])
        trainer.begin_segment()
    saved: dict[int, str] = {}
    losses: list[float] = []

    class Save(Hooks):
        def on_step(self, t: Trainer, indices: list[int], loss: float) -> None:
            losses.append(loss)

        def on_checkpoint(self, t: Trainer) -> None:
            saved[t.progress.step] = store.save(*t.state()).id

    every = Every(steps=job["every"])
    budget = Budget(steps=job["steps"])
    if job["ranks"] == 1:
        trainer.train(budget, hooks=Save(), eval_every=every, checkpoint_every=every)
    else:
        sizes = (len(datasets[0]), len(datasets[1]))
        with Team(job["ranks"], task=spec, study_path=None, device=device, timeout_s=300,
                  sizes=sizes) as team:  # fmt: skip
            team.attach(trainer)
            trainer.train(budget, hooks=Save(), eval_every=every, checkpoint_every=every)
    return {"saved": {str(k): v for k, v in saved.items()}, "losses": losses}


def time_role(job: dict[str, Any]) -> dict[str, Any]:
    """Step time of 1 rank and of 2 ranks on the same global batch, calls alternated."""
    from hpsearch.training import Budget, Hooks, Trainer
    from hpsearch.training.team import Team

    deterministic()
    torch.set_num_threads(1)
    task = globals()[job["task"]]()
    datasets = task.datasets()
    device = job["device"]
    one = Trainer.create(task, job["hparams"], seed=0, device=device, datasets=datasets)
    two = Trainer.create(task, job["hparams"], seed=0, device=device, datasets=datasets)
    stamps: list[float] = []

    class Clock(Hooks):
        def on_step(self, t: Trainer, indices: list[int], loss: float) -> None:
            if t.device.type == "cuda":
                torch.cuda.synchronize(t.device)
            stamps.append(time.perf_counter())

    def call(t: Trainer, steps: int) -> float:
        stamps.clear()
        t.train(Budget(steps=t.progress.step + steps), hooks=Clock())
        return statistics.median(b - a for a, b in itertools.pairwise(stamps))

    sizes = (len(datasets[0]), len(datasets[1]))
    times: dict[str, list[float]] = {"1 rank": [], "2 ranks": []}
    with Team(2, task=f"{HERE}:{job['task']}", study_path=None, device=device, timeout_s=600,
              sizes=sizes) as team:  # fmt: skip
        team.attach(two)
        call(one, 3)
        call(two, 3)
        for r in range(job["repeats"]):
            for name, t in (("1 rank", one), ("2 ranks", two))[:: 1 if r % 2 == 0 else -1]:
                times[name].append(call(t, job["steps"]))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(a / b for a, b in zip(times["2 ranks"], times["1 rank"], strict=True))
    return {"step_ms": ms, "ratio": ratio}


# -- the checks (this process: never initialises CUDA) -------------------------------------


class Checks:
    def __init__(self, device: str, out: str) -> None:
        self.device, self.out = device, out
        self.store = os.path.join(out, "store")
        self.results: list[dict[str, Any]] = []

    def spawn(self, role: str, job: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(ROOT, "src"), os.path.join(ROOT, "examples"),
             env.get("PYTHONPATH", "")]
        )  # fmt: skip
        job = {**job, "store": self.store, "device": self.device}
        proc = subprocess.run(
            [sys.executable, HERE, "--role", role, json.dumps(job)],
            env=env, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(
                f"{role} {json.dumps(job)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}"
            )
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.results.append({"check": name, "ok": ok, "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    def same(self, name: str, a: str, b: str) -> None:
        """Whether two checkpoints hold the same training state, bit for bit."""
        from hpsearch.checkpoint import open_store

        store = open_store(self.store)
        x, y = store.load(a), store.load(b)
        diffs = _tensor_diffs(x.tensors, y.tensors) + _state_diffs(x.state, y.state)
        n = sum(t.numel() for g in x.tensors.values() for t in g.values())
        detail = f"{n:,} values in {sum(map(len, x.tensors.values()))} tensors, and the state"
        if diffs:
            detail = "; ".join(diffs[:8]) + (f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else "")
            if self.device.startswith("cuda"):
                detail += " (NCCL: try NCCL_ALGO=Ring to tell its algorithm choice apart)"
        self.record(name, not diffs, detail)

    def control(self, ckpt: str) -> None:
        """The comparison itself can fail: a checkpoint against a copy with one bit of one
        weight flipped, and with one rank's RNG changed."""
        from hpsearch.checkpoint import open_store

        x = open_store(self.store).load(ckpt)
        flipped = {g: {k: v.clone() for k, v in t.items()} for g, t in x.tensors.items()}
        w = next(iter(flipped["model"].values())).reshape(-1).view(torch.int32)
        w[0] ^= 1
        rng = json.loads(json.dumps(x.state))
        rng["ranks"]["rng"][1]["python"][1][0] ^= 1
        seen = _tensor_diffs(x.tensors, flipped), _state_diffs(x.state, rng)
        self.record("the comparison sees one flipped bit in a weight and in rank 1's RNG",
                    all(len(d) == 1 for d in seen), "; ".join(d[0] for d in seen if d))  # fmt: skip

    def run_family(self, family: str, quick: bool) -> None:
        cls, hp, steps, every, changes = CHECKS[family]
        if quick:
            steps, every = steps // 2, every // 2
        mid = (steps // every // 2) * every
        base = {"task": cls, "hparams": hp, "ranks": 2, "every": every, "steps": steps}
        full = self.spawn("train", base)
        if not any(r["check"].startswith("the comparison") for r in self.results):
            self.control(full["saved"][str(steps)])
        resumed = self.spawn("train", {**base, "start": full["saved"][str(mid)]})
        self.same(f"{family}: resume from step {mid} of {steps} in a fresh process, new Team",
                  full["saved"][str(steps)], resumed["saved"][str(steps)])  # fmt: skip
        fork_job = {**base, "start": full["saved"][str(mid)], "fork": changes}
        forked = self.spawn("train", fork_job)
        again = self.spawn("train", fork_job)
        end = mid + steps
        self.same(f"{family}: fork at step {mid} to {changes}, done again in a fresh process",
                  forked["saved"][str(end)], again["saved"][str(end)])  # fmt: skip
        fork_mid = mid + (steps // every // 2) * every
        fork_resumed = self.spawn("train", {**base, "start": forked["saved"][str(fork_mid)]})
        self.same(f"{family}: that fork resumed from its step {fork_mid} in a fresh process",
                  forked["saved"][str(end)], fork_resumed["saved"][str(end)])  # fmt: skip
        ok = len(forked["losses"]) == steps and all(map(_finite, forked["losses"]))
        self.record(f"{family}: the fork trained {steps} steps of {changes['batch_size']}",
                    ok, f"{len(forked['losses'])} finite losses")  # fmt: skip

    def run_equivalence(self) -> None:
        cls, hp, _, every, _ = CHECKS["mlp"]
        job = {"task": cls, "hparams": {**hp, "dropout": 0.0}, "every": every, "steps": every}
        one = self.spawn("train", {**job, "ranks": 1})
        two = self.spawn("train", {**job, "ranks": 2})
        first = 3
        rel = [abs(a - b) / abs(a) for a, b in zip(one["losses"][:first], two["losses"][:first],
                                                   strict=True)]  # fmt: skip
        self.record(f"mlp: 2 ranks' first {first} training losses = 1 rank's within 1e-4",
                    max(rel) < 1e-4, f"largest relative difference {max(rel):.2e}")  # fmt: skip
        from hpsearch.checkpoint import open_store

        store = open_store(self.store)
        a = store.info(one["saved"][str(every)]).files
        b = store.info(two["saved"][str(every)]).files
        tensors_same = all(b[f][0] == a[f][0] for f in a if f.endswith(".safetensors"))
        extra = sum(s for s, _ in b.values()) - sum(s for s, _ in a.values())
        self.record("mlp: a 2-rank checkpoint's tensor files have the 1-rank one's sizes",
                    tensors_same and set(a) == set(b),
                    f"state.json {b['state.json'][0] - a['state.json'][0]:+,} bytes "
                    f"(every rank's RNG), {extra:+,} bytes in all")  # fmt: skip


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _tensor_diffs(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[str]:
    diffs = []
    for group in sorted(set(a) | set(b)):
        x, y = a.get(group, {}), b.get(group, {})
        for name in sorted(set(x) | set(y)):
            if name not in x or name not in y:
                diffs.append(f"{group}/{name} is in one checkpoint only")
                continue
            s, t = x[name], y[name]
            if s.dtype != t.dtype or s.shape != t.shape:
                diffs.append(
                    f"{group}/{name}: {s.dtype}{tuple(s.shape)} vs {t.dtype}{tuple(t.shape)}"
                )
            elif not torch.equal(s.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)):
                d = (s.double() - t.double()).abs().max().item() if s.is_floating_point() else "?"
                diffs.append(f"{group}/{name} differs (largest difference {d})")
    return diffs


def _state_diffs(a: Any, b: Any, where: str = "state") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{where}.{k} is in one checkpoint only")
            else:
                out += _state_diffs(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _state_diffs(x, y, f"{where}[{i}]")]  # fmt: skip
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    return [] if same else [f"{where}: {str(a)[:60]} vs {str(b)[:60]}"]


def _visible_gpus() -> tuple[int, str]:
    """GPUs visible, asked in a child process so that this one never initialises CUDA."""
    code = ("import torch, json; n = torch.cuda.device_count() if torch.cuda.is_available() "
            "else 0; print(json.dumps([n, [torch.cuda.get_device_name(i) for i in range(n)], "
            "torch.version.cuda, str(torch.cuda.nccl.version()) if n else None]))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return 0, f"torch.cuda failed: {out.stderr.strip()[-300:]}"
    n, names, cuda, nccl = json.loads(out.stdout)
    return n, f"{n} GPU(s) {names}, CUDA {cuda}, NCCL {nccl}"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None, help="where the store and ranks_nccl.json go")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per side")
    ap.add_argument("--quick", action="store_true", help="half the steps, the first timing")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.role:
        job = json.loads(rest[0])
        out = train_role(job) if args.role == "train" else time_role(job)
        print(json.dumps(out))
        return 0
    started = time.monotonic()
    gpus, about = _visible_gpus()
    print(f"ranks_nccl: torch {torch.__version__}; {about}; device {args.device}; "
          f"CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}, "
          "torch.use_deterministic_algorithms(True) in every process", flush=True)  # fmt: skip
    if args.device == "cuda" and gpus < 2:
        print(f"SKIPPED: 2 ranks on cuda need 2 visible GPUs, one per rank; {about}. "
              "Nothing was checked (run with --device cpu to try the script on gloo).")  # fmt: skip
        return SKIPPED
    where = args.out or tempfile.mkdtemp(prefix="ranks-nccl-")
    os.makedirs(where, exist_ok=True)
    shutil.rmtree(os.path.join(where, "store"), ignore_errors=True)
    checks = Checks(args.device, where)
    timing: dict[str, Any] = {}
    try:
        for family in CHECKS:
            checks.run_family(family, args.quick)
        checks.run_equivalence()
        # on the CPU only the small MLP: the others take minutes there (benchmarks/ranks.py
        # measures the CPU)
        timed = list(TIMED.items())[: 1 if args.quick or args.device == "cpu" else None]
        for name, (cls, hp, steps) in timed:
            if args.no_timing:
                break
            job = {"task": cls, "hparams": hp, "steps": steps, "repeats": args.repeats}
            timing[name] = got = checks.spawn("time", job)
            ms = got["step_ms"]
            print(f"time  {name}: 1 rank {ms['1 rank']:.2f} ms a step, 2 ranks "
                  f"{ms['2 ranks']:.2f} ms ({got['ratio']:.2f}×)", flush=True)  # fmt: skip
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        checks.record("every training process ran", False, str(exc))
    failed = [r for r in checks.results if not r["ok"]]
    summary = {"about": about, "device": args.device, "checks": checks.results,
               "timing": timing, "wall_s": time.monotonic() - started}  # fmt: skip
    with open(os.path.join(where, "ranks_nccl.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"{len(checks.results) - len(failed)} of {len(checks.results)} checks passed "
          f"({summary['wall_s']:.0f} s); results in {where}/ranks_nccl.json")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
