"""Data-parallel trials on the CPU: what 2 ranks cost and give against 1, in one run (issue 25).

    python benchmarks/ranks.py [--repeats 5] [--json PATH] [--md PATH] [--quick]

For each model (the digits MLP at hidden 1024 and 4096, and the char transformer at d=128 and
4 layers, evaluated on an eighth of its validation set: from latency-bound to compute-bound)
three trainers of the same hyperparameters and global batch are built in this process and, in
each repeat, train `steps` more optimizer steps one after the other, in an order rotated each
repeat so that a change in the machine's load hits them alike:

- `1 rank, 1 thread`: a plain trainer, one torch thread;
- `1 rank, 2 threads`: the same with two torch threads (the cores the 2-rank run uses);
- `2 ranks, 1 thread each`: rank 0 here, attached to a `Team` of 2 whose follower
  (`python -m hpsearch.training.follower`) was started once for the whole benchmark.

A call's step time is the median interval between consecutive `on_step` hooks of rank 0 (every
rank's step and the decision sent after it); its per-call cost is its wall time less the time
from its first step's end to its last's and less one step (the evaluation at the end of every
`train()` call is in both sides' figure; the 2-rank side adds the state sent to the follower,
the follower's rebuild, and the RNG gather).
Ratios are taken within a repeat and their median reported. Of a step, the script also times
the optimizer's step and (2 ranks) `Link.reduce_grads`, which packs the gradients, sums them
and the loss over the ranks, and unpacks them; and it reads, from Linux's schedstat, how long
each process's main thread (where torch computes, at one thread) ran and how long it waited
for a core while runnable during the calls: the rest of the time it was blocked, in a
collective waiting for the other rank.

Then, per model: checkpoint bytes of a 1-rank and a 2-rank state (the replicated model and
optimizer are written once: the 2-rank checkpoint is the 1-rank one plus every rank's RNG in
state.json), and the times of `store.save(*trainer.state())` and of `store.load(id)` +
`Trainer.restore` on a `LocalStore` in a temporary directory, alternated. Last, the Team's start
(spawning the follower, which imports torch and the task and loads its data, and connecting) and
end, which a trial of `trials.processes: 2` pays once, next to a bare `python -c "import torch"`.

The machine is shared: compare the ratios of one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Subset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

from chars import CharLM  # noqa: E402

from hpsearch.checkpoint import open_store  # noqa: E402
from hpsearch.training import Budget, Hooks, Trainer  # noqa: E402
from hpsearch.training.team import Team  # noqa: E402

MLP = os.path.join(ROOT, "examples", "digits.py") + ":DigitsMLP"
CHARS = os.path.abspath(__file__) + ":BenchChars"
# name: (task spec, hparams, timed steps per call)
MODELS: dict[str, tuple[str, dict[str, Any], int]] = {
    "MLP h1024 b128": (MLP, {"lr": 1e-3, "dropout": 0.1, "batch_size": 128, "hidden": 1024,
                             "weight_decay": 1e-4}, 20),
    "MLP h4096 b256": (MLP, {"lr": 1e-3, "dropout": 0.1, "batch_size": 256, "hidden": 4096,
                             "weight_decay": 1e-4}, 4),
    "chars d128 l4 b64": (CHARS, {"lr": 1e-3, "dropout": 0.1, "batch_size": 64, "d_model": 128,
                                  "layers": 4, "heads": 4, "weight_decay": 1e-2}, 4),
}  # fmt: skip


class BenchChars(CharLM):
    """`chars.CharLM` evaluated on every 8th validation window (72 of 575): the evaluation that
    ends every `train()` call would otherwise take most of this benchmark's time."""

    def datasets(self) -> tuple[Any, Any]:
        train, val = super().datasets()
        return train, Subset(val, range(0, len(val), 8))


SIDES = ("1 rank, 1 thread", "1 rank, 2 threads", "2 ranks, 1 thread each")
TIMEOUT_S = 900.0  # the follower waits this long for rank 0's next command


class Probe(Hooks):
    """What one trainer's calls spend: rank 0's `on_step` times, each optimizer step's time and
    (with ranks) each `reduce_grads` call's, and the CPU time this process and the follower use."""

    def __init__(self, trainer: Trainer, follower: int) -> None:
        self.follower = follower
        self.stamps: list[float] = []
        self.opt: list[float] = []
        self.reduce: list[float] = []
        self.begin: list[float] = []
        self._t = 0.0
        trainer.optimizer.register_step_pre_hook(self._opt_start)
        trainer.optimizer.register_step_post_hook(self._opt_end)
        if trainer.gang is not None:
            link = trainer.gang.link
            link.reduce_grads = self._timed(link.reduce_grads, self.reduce)  # type: ignore[method-assign]
            trainer.gang.begin = self._timed(trainer.gang.begin, self.begin)  # type: ignore[method-assign]

    @staticmethod
    def _timed(fn: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - t)

        return timed

    def _opt_start(self, *_: Any) -> None:
        self._t = time.perf_counter()

    def _opt_end(self, *_: Any) -> None:
        self.opt.append(time.perf_counter() - self._t)

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self.stamps.append(time.perf_counter())

    def call(self, trainer: Trainer, steps: int, threads: int) -> dict[str, float]:
        """Train `steps` more steps; this call's figures, in seconds (CPU: per wall second)."""
        for kept in (self.stamps, self.opt, self.reduce, self.begin):
            kept.clear()
        torch.set_num_threads(threads)
        p = trainer.progress
        me, start = os.getpid(), time.perf_counter()
        s0, s1 = _sched(me), _sched(self.follower)
        trainer.train(Budget(steps=p.step - p.origin_step + steps), hooks=self)
        wall = time.perf_counter() - start
        (r0, w0), (r1, w1) = _since(s0, _sched(me)), _since(s1, _sched(self.follower))
        torch.set_num_threads(1)
        step = statistics.median(b - a for a, b in itertools.pairwise(self.stamps))
        # the first step of a call waits for the follower's rebuild: the steady steps only
        return {
            "step": step,
            # the call less its steps: less the span from the first step to the last, and less
            # a steady step for the first
            "extra": wall - (self.stamps[-1] - self.stamps[0]) - step,
            "opt": statistics.median(self.opt[1:]),
            "reduce": statistics.median(self.reduce[1:]) if self.reduce else math.nan,
            "begin": self.begin[0] if self.begin else math.nan,
            "run_rank0": r0 / wall,
            "wait_rank0": w0 / wall,
            "run_follower": r1 / wall,
            "wait_follower": w1 / wall,
        }


def _sched(pid: int) -> tuple[float, float]:
    """A process's main thread (where torch computes, at one thread): seconds it has run and
    seconds it has waited for a core while runnable (Linux's schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        run, wait, _ = f.read().split()
    return int(run) / 1e9, int(wait) / 1e9


def _since(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return b[0] - a[0], b[1] - a[1]


def measure_steps(
    name: str, team: Team, datasets: tuple[Any, Any], task: Any, repeats: int
) -> dict[str, Any]:
    _, hp, steps = MODELS[name]
    trainers = {s: Trainer.create(task, hp, seed=0, datasets=datasets) for s in SIDES}
    ranked = trainers[SIDES[2]]
    team.attach(ranked)
    threads = {SIDES[0]: 1, SIDES[1]: 2, SIDES[2]: 1}
    follower = team.procs[0].pid
    probes = {s: Probe(t, follower) for s, t in trainers.items()}
    for s, t in trainers.items():  # untimed: first kernels, the follower's first rebuild
        probes[s].call(t, 2, threads[s])
    got: dict[str, list[dict[str, float]]] = {s: [] for s in SIDES}
    for r in range(repeats):
        for s in SIDES[r % 3 :] + SIDES[: r % 3]:
            got[s].append(probes[s].call(trainers[s], steps, threads[s]))
    team.trainers.remove(ranked)
    ranked.gang = None
    ranked.stream.set_shard(None)

    def med(side: str, key: str, scale: float = 1e3) -> float:
        return scale * statistics.median(c[key] for c in got[side])

    def ratio(side: str, key: str) -> float:
        pairs = zip(got[side], got[SIDES[0]], strict=True)
        return statistics.median(a[key] / b[key] for a, b in pairs)

    return {
        "params": sum(p.numel() for p in ranked.model.parameters()),
        "hparams": hp,
        "steps_per_call": steps,
        "step_ms": {s: med(s, "step") for s in SIDES},
        "step_ratio": {s: ratio(s, "step") for s in SIDES},
        "optimizer_ms": {s: med(s, "opt") for s in SIDES},
        "reduce_grads_ms": med(SIDES[2], "reduce"),
        "call_extra_ms": {s: med(s, "extra") for s in SIDES},
        "begin_ms": med(SIDES[2], "begin"),
        "call_extra_2_less_1_ms": 1e3
        * statistics.median(
            a["extra"] - b["extra"] for a, b in zip(got[SIDES[2]], got[SIDES[0]], strict=True)
        ),
        **{
            k: {s: med(s, k, 1.0) for s in SIDES}
            for k in ("run_rank0", "wait_rank0", "run_follower", "wait_follower")
        },
        "trainers": trainers,
    }


def measure_checkpoints(
    task: Any, datasets: Any, trainers: dict[str, Trainer], repeats: int
) -> dict[str, Any]:
    """Bytes and save/restore times of a 1-rank and a 2-rank state, alternated."""
    one, two = trainers[SIDES[0]], trainers[SIDES[2]]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ranks-bench-") as tmp:
        store = open_store(tmp)
        infos = {"1 rank": store.save(*one.state()), "2 ranks": store.save(*two.state())}
        tensors, state = two.state()
        alone = {k: v for k, v in state.items() if k != "ranks"}
        alone["version"] = one.state()[1]["version"]  # what 1 rank writes for this very state
        infos["2 ranks, without `ranks`"] = store.save(tensors, alone)
        ranks_json = len(', "ranks": ') + len(json.dumps(state["ranks"], allow_nan=True))
        out["files"] = {k: {f: s for f, (s, _) in i.files.items()} for k, i in infos.items()}
        out["bytes"] = {k: i.nbytes for k, i in infos.items()}
        out["ranks_json_bytes"] = ranks_json
        extra = out["bytes"]["2 ranks"] - out["bytes"]["2 ranks, without `ranks`"]
        out["extra_bytes"] = extra
        out["extra_is_rng_json_only"] = extra == ranks_json and all(
            out["files"]["2 ranks"][f] == out["files"]["1 rank"][f]
            for f in out["files"]["1 rank"]
            if f.endswith(".safetensors")
        )
        save: dict[str, list[float]] = {"1 rank": [], "2 ranks": []}
        load: dict[str, list[float]] = {"1 rank": [], "2 ranks": []}
        pair = {"1 rank": one, "2 ranks": two}
        for r in range(repeats):
            for k in ("1 rank", "2 ranks") if r % 2 == 0 else ("2 ranks", "1 rank"):
                t = time.perf_counter()
                info = store.save(*pair[k].state())
                save[k].append(time.perf_counter() - t)
                t = time.perf_counter()
                loaded = store.load(info.id)
                back = Trainer.restore(task, loaded.tensors, loaded.state, datasets=datasets)
                load[k].append(time.perf_counter() - t)
                assert back.processes == (2 if k == "2 ranks" else 1)
                store.delete(info.id)
        out["save_ms"] = {k: 1e3 * statistics.median(v) for k, v in save.items()}
        out["load_restore_ms"] = {k: 1e3 * statistics.median(v) for k, v in load.items()}
    return out


def measure_team(spec: str, sizes: tuple[int, int], repeats: int) -> dict[str, float]:
    """Team start (spawn + the follower's imports and data + connect) and end, vs import torch."""
    start: list[float] = []
    end: list[float] = []
    bare: list[float] = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        bare.append(time.perf_counter() - t)
        team = Team(2, task=spec, study_path=None, device="cpu", timeout_s=TIMEOUT_S, sizes=sizes)
        t = time.perf_counter()
        team.__enter__()
        start.append(time.perf_counter() - t)
        t = time.perf_counter()
        team.__exit__(None, None, None)
        end.append(time.perf_counter() - t)
    return {
        "start_ms": 1e3 * statistics.median(start),
        "end_ms": 1e3 * statistics.median(end),
        "import_torch_ms": 1e3 * statistics.median(bare),
    }


def run(models: list[str], repeats: int) -> dict[str, Any]:
    from hpsearch.config.taskload import load_task

    results: dict[str, Any] = {}
    for name in models:
        spec = MODELS[name][0]
        task = load_task(spec)()
        datasets = task.datasets()
        sizes = (len(datasets[0]), len(datasets[1]))  # type: ignore[arg-type]
        with Team(2, task=spec, study_path=None, device="cpu", timeout_s=TIMEOUT_S,
                  sizes=sizes) as team:  # fmt: skip
            res = measure_steps(name, team, datasets, task, repeats)
        trainers = res.pop("trainers")
        res["checkpoint"] = measure_checkpoints(task, datasets, trainers, repeats)
        results[name] = res
        print(f"{name}: done", file=sys.stderr)
    for spec in dict.fromkeys(MODELS[n][0] for n in models):
        task = load_task(spec)()
        train, val = task.datasets()
        sizes = (len(train), len(val))  # type: ignore[arg-type]
        results[f"team {os.path.basename(spec)}"] = measure_team(spec, sizes, min(repeats, 3))
    return results


Cell = Callable[[dict[str, Any]], str]


def _joined(a: Cell, b: Cell) -> Cell:
    return lambda r: a(r) + b(r)


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    models = [k for k in results if not k.startswith("team ")]
    lines = [
        f"{meta['machine']}; torch {meta['torch']}; {meta['date']}; load average "
        f"{meta['load_before']:.1f} before, {meta['load_after']:.1f} after; {meta['repeats']} "
        "repeats",
        "",
        "| | " + " | ".join(models) + " |",
        "| --- |" + " ---: |" * len(models),
    ]

    def row(label: str, cell: Cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(results[m]) for m in models) + " |")

    def side(key: str, fmt: str, s: str) -> Cell:
        return lambda r: fmt.format(r[key][s])

    def ckpt(key: str, fmt: str, k: str) -> Cell:
        return lambda r: fmt.format(r["checkpoint"][key][k])

    row("parameters", lambda r: f"{r['params'] / 1e6:.2f} M")
    row("timed steps per call", lambda r: str(r["steps_per_call"]))
    for s in SIDES:
        row(
            f"step, {s}",
            _joined(side("step_ms", "{:.1f} ms", s), side("step_ratio", " ({:.2f}×)", s)),
        )
    row("2 ranks: of a step, `reduce_grads` (copies, all-reduce, waiting for the other rank)",
        lambda r: f"{r['reduce_grads_ms']:.1f} ms")  # fmt: skip
    for s in (SIDES[0], SIDES[2]):
        row(f"of a step, the optimizer's, {s}", side("optimizer_ms", "{:.1f} ms", s))
    for s in (SIDES[0], SIDES[2]):
        row(
            f"rank 0's main thread, {s}: running / waiting for a core (s per s)",
            _joined(side("run_rank0", "{:.2f}", s), side("wait_rank0", " / {:.2f}", s)),
        )
    row(
        f"the follower's main thread, {SIDES[2]}: running / waiting for a core",
        _joined(
            side("run_follower", "{:.2f}", SIDES[2]), side("wait_follower", " / {:.2f}", SIDES[2])
        ),
    )
    row(
        "the follower while it waits for rank 0 (the 1-rank calls): running",
        side("run_follower", "{:.3f}", SIDES[0]),
    )
    for s in SIDES:
        row(f"per call beyond its steps, {s}", side("call_extra_ms", "{:.0f} ms", s))
    row("per call: 2 ranks' less 1 rank's (state sync, rebuild, RNG gather)",
        lambda r: f"{r['call_extra_2_less_1_ms']:.0f} ms")  # fmt: skip
    row("of it, rank 0's `Gang.begin` (sends the state)", lambda r: f"{r['begin_ms']:.0f} ms")
    for k in ("1 rank", "2 ranks"):
        row(f"checkpoint bytes, {k}", ckpt("bytes", "{:,}", k))
    row("2-rank bytes less the same state without `ranks`",
        lambda r: f"{r['checkpoint']['extra_bytes']:,}")  # fmt: skip
    row("the ranks' RNG JSON", lambda r: f"{r['checkpoint']['ranks_json_bytes']:,}")
    row("tensor files equal, extra = RNG JSON only",
        lambda r: "yes" if r["checkpoint"]["extra_is_rng_json_only"] else "**no**")  # fmt: skip
    for k in ("1 rank", "2 ranks"):
        row(f"save, {k}", ckpt("save_ms", "{:.1f} ms", k))
    for k in ("1 rank", "2 ranks"):
        row(f"load + restore, {k}", ckpt("load_restore_ms", "{:.1f} ms", k))
    lines += [
        "",
        "| team of 2 | start | end | `python -c 'import torch'` |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k, v in results.items():
        if k.startswith("team "):
            lines.append(f"| {k[5:]} | {v['start_ms']:.0f} ms | {v['end_ms']:.0f} ms | "
                         f"{v['import_torch_ms']:.0f} ms |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--quick", action="store_true", help="the first model, 2 repeats")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--md", help="write the Markdown table here")
    args = ap.parse_args()
    if args.quick:
        args.models, args.repeats = args.models[:1], 2
    torch.set_num_threads(1)  # the Team gives its follower this process's thread count
    meta = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg()[0],
        "repeats": args.repeats,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    t = time.perf_counter()
    results = run(args.models, args.repeats)
    meta["load_after"] = os.getloadavg()[0]
    meta["wall_s"] = time.perf_counter() - t
    table = render(results, meta)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
