"""Exactness and checkpoint speed on a GPU, in one run (issue 24: the checks a lent GPU is for).

    python benchmarks/gpu_check.py --out DIR [--device cuda] [--quick]

1. For each model family (MLP, CNN with BatchNorm, char transformer, GPT-2 from `transformers`,
   a LightningModule with torchmetrics), with and without PyTorch's deterministic settings
   (`CUBLAS_WORKSPACE_CONFIG=:4096:8` and `torch.use_deterministic_algorithms(True)`, set in
   every process through a sitecustomize module): `hpsearch check-resume` (restore in a fresh
   process, compare), a small fork tree run to the end, and `replay` of every kept final.
2. Checkpoint save and restore of a 25M-parameter model with AdamW state living on the device,
   against the raw device-to-host and host-to-device copy speed of the same tensors.

Writes DIR/gpu_check.json and DIR/gpu_check.md. It needs hpsearch importable (PYTHONPATH=src)
and its dependencies; `--device cpu` runs the same on the CPU (to try the script here).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

SITECUSTOMIZE = """
import os
if os.environ.get("HPSEARCH_CHECK_DETERMINISTIC") == "1":
    import torch
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
if os.environ.get("HPSEARCH_CHECK_NO_CUDNN") == "1":
    import torch
    torch.backends.cudnn.enabled = False
"""

# family -> (task, fixed hparams, search space, budget in epochs, objective)
FAMILIES: dict[str, tuple[str, dict[str, Any], dict[str, Any], float, tuple[str, str]]] = {
    "mlp": ("digits.py:DigitsMLP", {"hidden": 64, "weight_decay": 1e-4},
            {"batch_size": {"categorical": [32, 64, 128]}}, 2.0, ("val_accuracy", "maximize")),
    "cnn-batchnorm": ("digits_cnn.py:DigitsCNN", {"width": 16, "weight_decay": 1e-4},
                      {"batch_size": {"categorical": [32, 64]}}, 1.0, ("val_accuracy", "maximize")),
    "char-transformer": ("chars.py:CharLM", {"d_model": 64, "layers": 2, "heads": 4,
                                             "weight_decay": 1e-2, "batch_size": 32},
                         {}, 0.1, ("val_bpc", "minimize")),
    "gpt2": ("gpt2.py:TinyGPT2", {"n_embd": 64, "n_layer": 2, "n_head": 2, "weight_decay": 1e-2,
                                  "batch_size": 32}, {}, 0.1, ("val_loss", "minimize")),
    "lightning-torchmetrics": ("lightning_digits.py:DigitsTask", {"hidden": 64, "batch_size": 64},
                               {}, 2.0, ("val_accuracy", "maximize")),
}  # fmt: skip


def _study(tmp: str, family: str, device: str, quick: bool) -> str:
    task, fixed, space, epochs, (metric, direction) = FAMILIES[family]
    doc = {
        "name": family,
        "task": os.path.join(EXAMPLES, task),
        "seed": 0,
        "device": device,
        "objective": {"metric": metric, "direction": direction},
        "checkpoints": {"every": 0.5, "keep_best": 1000},
        "tree": {
            "roots": 2 if quick else 3,
            "rungs": [0.3, 0.6, 1.0],
            "keep": 0.5,
            "children": 2,
            "hparams": fixed,
        },
        "trials": {"epochs": epochs * (0.5 if quick else 1.0), "eval_every": epochs / 4},
        # a LightningModule's configure_optimizers returns its own scheduler
        "schedule": None if family.startswith("lightning") else {"name": "wsd", "decay": 0.25},
        "search_space": {
            "lr": {"float": [1e-3, 1e-2], "log": True},
            "dropout": {"float": [0.0, 0.2]},
            **space,
        },
        "sampler": {"name": "TPESampler", "n_startup_trials": 3},
        "pruner": {"name": "NopPruner"},
    }
    doc = {k: v for k, v in doc.items() if v is not None}
    path = os.path.join(tmp, f"{family}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


REPLAY_ALL = """
import json, sys
from optuna.trial import TrialState
from hpsearch.search.replay import replay
from hpsearch.search.session import Session
s = Session.open(sys.argv[1], create=False)
out = []
for t in s.study.get_trials():
    if t.state == TrialState.COMPLETE:
        _, r = replay(s, t.number, say=lambda _: None)
        out.append({"trial": t.number, "compared": r.compared, "differs": r.differs[:5],
                    "value": t.value, "replayed": r.metrics.get(r.metric), "exact": r.exact})
print("RESULT " + json.dumps(out))
"""


DEADLINE = [float("inf")]  # time.monotonic() by which every command must be done (--deadline-s)


def _sh(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    began = time.monotonic()
    timeout = max(1.0, min(timeout, DEADLINE[0] - began))
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr, time.monotonic() - began
    except subprocess.TimeoutExpired as e:
        return 124, f"timed out after {timeout} s: {e}", time.monotonic() - began


def _env(tmp: str, deterministic: bool) -> dict[str, str]:
    """This process's environment, with PyTorch's deterministic settings on or off in every
    process it starts (a sitecustomize module on PYTHONPATH)."""
    site = os.path.join(tmp, "site")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    paths = [site, os.path.join(ROOT, "src"), EXAMPLES,
             os.environ.get("PYTHONPATH", "")]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
    if deterministic:
        env |= {"HPSEARCH_CHECK_DETERMINISTIC": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    return env


def one_family(family: str, deterministic: bool, device: str, quick: bool) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix=f"gpu-{family}-")
    env = _env(tmp, deterministic)
    path = _study(tmp, family, device, quick)
    hp = [sys.executable, "-m", "hpsearch"]
    row: dict[str, Any] = {"family": family, "deterministic": deterministic}
    rc, out, secs = _sh([*hp, "check-resume", path, "--steps", "8"], env, 300)
    row["check_resume"] = {"rc": rc, "seconds": round(secs, 1), "tail": out[-600:]}
    rc, out, secs = _sh([*hp, "run", path], env, 400)
    row["run"] = {"rc": rc, "seconds": round(secs, 1), "tail": out[-600:]}
    if rc == 0:
        rc, out, secs = _sh([sys.executable, "-c", REPLAY_ALL, path], env, 400)
        got = [json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT ")]
        row["replays"] = got[0] if got else {"rc": rc, "tail": out[-800:]}
        row["replay_seconds"] = round(secs, 1)
    return row


def zoo(device: str, deterministic: bool, only: str = "", cudnn: bool = True) -> dict[str, Any]:
    """The conformance zoo (tests/test_zoo.py: every entry resumed in a fresh process and
    forked, every family forked in every key) with its models on `device`; `only` a pytest -k
    expression, `cudnn` False runs it with cuDNN off."""
    tmp = tempfile.mkdtemp(prefix="gpu-zoo-")
    env = _env(tmp, deterministic) | {"HPSEARCH_ZOO_DEVICE": device}
    if not cudnn:
        env["HPSEARCH_CHECK_NO_CUDNN"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider", "-rf",
           os.path.join(ROOT, "tests", "test_zoo.py"), *(["-k", only] if only else [])]  # fmt: skip
    rc, out, secs = _sh(cmd, env, 500)
    failed = [line[7:].split(" - ")[0] for line in out.splitlines() if line.startswith("FAILED ")]
    summary = next((x for x in reversed(out.splitlines())
                    if re.search(r"\d+ (passed|failed|error)", x)), "")  # fmt: skip
    return {"deterministic": deterministic, "only": only, "cudnn": cudnn, "rc": rc,
            "seconds": round(secs, 1),
            "summary": summary.strip("= "), "failed": failed, "tail": out[-1500:]}  # fmt: skip


def exactness(
    device: str, quick: bool, log: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (family, deterministic settings) pair and the zoo, run side by side: the machine
    has cores and the GPU memory for all of them at once."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(f, d) for d in (True, False) for f in FAMILIES]
    with ThreadPoolExecutor(len(jobs) + 2) as pool:
        zoos = [pool.submit(zoo, device, d) for d in (True, False)]
        # cuDNN's RNNs keep their dropout state outside torch's RNG: the same with cuDNN off
        zoos.append(pool.submit(zoo, device, True, "gru or lstm", False))
        futures = [pool.submit(one_family, f, d, device, quick) for f, d in jobs]
        rows = []
        for future in futures:
            rows.append(future.result())
            print(json.dumps(_short(rows[-1])), file=log, flush=True)
        zoo_rows = [z.result() for z in zoos]
        for z in zoo_rows:
            print(json.dumps({k: z[k] for k in ("deterministic", "rc", "summary", "failed")}),
                  file=log, flush=True)  # fmt: skip
    return rows, zoo_rows


def _short(row: dict[str, Any]) -> dict[str, Any]:
    reps = row.get("replays")
    exact = sum(r["exact"] for r in reps) if isinstance(reps, list) else None
    return {
        "family": row["family"],
        "deterministic": row["deterministic"],
        "check_resume": row["check_resume"]["rc"],
        "run": row["run"]["rc"],
        "replays_exact": f"{exact}/{len(reps)}" if isinstance(reps, list) else reps,
    }


def checkpoint_speed(device: str, repeats: int = 5) -> dict[str, Any]:
    """A 25M-parameter MLP with AdamW state on `device`: raw copies against hpsearch's save
    (the blocking snapshot into pinned buffers, and the whole write) and load (+ the copy back)."""
    import torch

    sys.path.insert(0, os.path.join(ROOT, "src"))
    from hpsearch.checkpoint import open_store
    from hpsearch.checkpoint.async_save import AsyncSaver

    dev = torch.device(device)
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(6)]).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, 2048, device=dev)).sum().backward()
    opt.step()
    tensors = {"model": dict(model.state_dict())}
    tensors["optimizer"] = {f"{i}.{k}": v for i, s in enumerate(opt.state.values())
                            for k, v in s.items() if v.dim() > 0}  # fmt: skip
    flat = [t for g in tensors.values() for t in g.values()]
    nbytes = sum(t.numel() * t.element_size() for t in flat)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Any) -> float:
        best = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best.append(time.perf_counter() - t0)
        return sorted(best)[len(best) // 2]

    out: dict[str, Any] = {"bytes": nbytes, "tensors": len(flat), "device": str(dev)}
    out["d2h_pageable_s"] = timed(lambda: [t.cpu() for t in flat])
    if dev.type == "cuda":
        pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in flat]
        pairs = list(zip(pinned, flat, strict=True))
        out["d2h_pinned_s"] = timed(lambda: [p.copy_(t, non_blocking=True) for p, t in pairs])
        out["h2d_pinned_s"] = timed(lambda: [t.copy_(p, non_blocking=True) for p, t in pairs])
    host = [t.cpu() for t in flat]
    out["h2d_pageable_s"] = timed(lambda: [h.to(dev) for h in host])
    root = tempfile.mkdtemp(prefix="gpu-store-")
    store = open_store(os.path.join(root, "ckpt"))
    saver = AsyncSaver(store)
    snapshots, writes = [], []
    for i in range(repeats):
        sync()
        t0 = time.perf_counter()
        saver.save(tensors, {"i": i})  # returns once the snapshot is taken
        snapshots.append(time.perf_counter() - t0)
        info = saver.wait()
        writes.append(time.perf_counter() - t0)
    saver.close()
    out["save_blocking_s"] = sorted(snapshots)[repeats // 2]
    out["save_total_s"] = sorted(writes)[repeats // 2]

    def load() -> None:
        loaded = store.load(info.id)
        for g in loaded.tensors.values():
            for t in g.values():
                t.to(dev, non_blocking=True)

    out["load_and_copy_s"] = timed(load)
    out["load_only_s"] = timed(lambda: store.load(info.id))
    gb = nbytes / 1e9
    out["GB/s"] = {k[:-2]: round(gb / v, 2) for k, v in out.items() if k.endswith("_s") and v}
    return out


def markdown(
    info: dict[str, Any], rows: list[dict[str, Any]], speed: dict[str, Any],
    zoo_rows: list[dict[str, Any]],
) -> str:  # fmt: skip
    lines = [
        f"GPU check: {info['device_name']}, torch {info['torch']}, {info['date']}",
        "",
        "| family | deterministic settings | check-resume | tree run | finals replayed exactly |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s = _short(r)
        cr = "exact" if s["check_resume"] == 0 else f"exit {s['check_resume']}"
        lines.append(f"| {s['family']} | {'on' if s['deterministic'] else 'off'} | {cr} | "
                     f"exit {s['run']} | {s['replays_exact']} |")  # fmt: skip
    for z in zoo_rows:
        det = ("on" if z["deterministic"] else "off") + ("" if z["cudnn"] else ", cuDNN off")
        det += f", -k {z['only']!r}" if z["only"] else ""
        failed = ", ".join(z["failed"][:8]) or "none"
        lines.append(
            f"| the zoo (tests/test_zoo.py) | {det} | {z['summary']} | | failed: {failed} |"
        )
    size = f"{speed['bytes'] / 1e6:.0f} MB in {speed['tensors']} tensors on {speed['device']}"
    lines += ["", f"checkpoint of {size} (median of 5):", "", "| operation | s | GB/s |"]
    lines.append("| --- | --- | --- |")
    for k, v in speed.items():
        if k.endswith("_s"):
            lines.append(f"| {k[:-2]} | {v:.4f} | {speed['GB/s'][k[:-2]]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="smaller trees (to try the script)")
    p.add_argument("--families", nargs="*", default=list(FAMILIES))
    p.add_argument(
        "--deadline-s",
        type=float,
        default=float("inf"),
        help="stop every command this many seconds after the start (a lease's end)",
    )
    args = p.parse_args()
    DEADLINE[0] = time.monotonic() + args.deadline_s
    for name in list(FAMILIES):
        if name not in args.families:
            del FAMILIES[name]
    import torch

    os.makedirs(args.out, exist_ok=True)
    info = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda")
            else "cpu", "threads": torch.get_num_threads()}  # fmt: skip
    with open(os.path.join(args.out, "gpu_check.log"), "w") as log:
        print(json.dumps(info), file=log, flush=True)
        speed = checkpoint_speed(args.device)
        print(json.dumps(speed), file=log, flush=True)
        rows, zoo_rows = exactness(args.device, args.quick, log)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({"info": info, "exactness": rows, "zoo": zoo_rows, "checkpoint": speed}, f,
                  indent=1)  # fmt: skip
    text = markdown(info, rows, speed, zoo_rows)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(text)
    print(textwrap.indent(text, ""))


if __name__ == "__main__":
    main()
