"""Search efficiency at a budget (issues 14 and 23): Optuna TPE with a MedianPruner (classic), a
HyperbandPruner and a SuccessiveHalvingPruner, Ray Tune's PopulationBasedTraining, hpsearch's
fork tree whose children only continue (successive halving on the same rungs), and the fork tree
sized from the budget B and from B/2 -- on the same tasks, search spaces, LR schedule and budget,
cost counted in training samples.

Run from the repository root, by hand (it trains for real; see benchmarks/RESULTS.md):

    python benchmarks/search_efficiency.py --workload resnet --seeds 0 1 2 3 4 --name heldout
    python benchmarks/search_efficiency.py --workload digits --arm tree --tree-keep 0.5 \
        --seeds 100 101 102 --from benchmarks/efficiency/tuning.json --name tuning --skip-done

Every arm of a workload reads its study file `benchmarks/studies/<workload>.yaml` (a search
space and a budget; no tree keys) and spends the same budget, B full runs from scratch (the
workload's, below, or `--budget W=B`), counted in samples: every trial, root, probe and pruned
trial once. The Optuna arms stop starting trials once they have spent it (hpsearch's own
`trials.budget`, in classic mode); PBT's population is B; the trees take their shape from the
budget (`--tree-*` overrides a key, for the tuning runs; `--tree-pruner none` runs the tree
without a pruner inside its generations). `--workers N` runs each hpsearch search with N worker
processes, as `hpsearch run --workers N` does (the asynchronous and synchronous trees then
promote differently: `--tree-promotion`).

Outputs in `--out` (default `benchmarks/`), named by `--name`: `<name>.json` (every curve;
`--from` reads it back, several files merge, a later run of the same workload, arm and seed
replaces an earlier one), `<name>.md` (the tables) and `<name>.png` (the anytime curves).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from efficiency import report
from efficiency.arms import full_run_epochs, prime, run_hpsearch, study_copy
from efficiency.records import Run, load_runs, merge, save_runs

HERE = os.path.dirname(os.path.abspath(__file__))
STUDIES = os.path.join(HERE, "studies")
ARMS = ("tpe-median", "tpe-hyperband", "tpe-sha", "ray-pbt", "tree-sh", "tree", "tree-half")
CLASSIC_ARMS = ("tpe-median", "tpe-hyperband", "tpe-sha")
TREE_ARMS = ("tree-sh", "tree", "tree-half")
# workload: (split, its budget B in full runs from scratch). The split was named in RESULTS.md
# before the held-out workloads first ran; B is sized so that the whole benchmark fits a few
# hours of a 2-core machine (RESULTS.md says where that is smaller than a practitioner's)
WORKLOADS = {
    "digits": ("tuning", 12.0), "cnn": ("tuning", 12.0), "chars": ("tuning", 12.0),
    "resnet": ("held-out", 8.0), "gru": ("held-out", 8.0), "friedman": ("held-out", 8.0),
    "tabular": ("held-out", 8.0),
}  # fmt: skip
TREE_KEYS = ("roots", "rungs", "keep", "children", "probe", "promotion")


def study_of(workload: str) -> str:
    return os.path.join(STUDIES, f"{workload}.yaml")


def tree_label(tree: dict[str, Any], arm: str = "tree") -> str:
    """The arm's name, with the tree keys it overrides: `tree[k0.5 c2]`."""
    if not tree:
        return arm
    short = {"roots": "r", "rungs": "rungs", "keep": "k", "children": "c", "probe": "p",
             "pruner": "pruner-", "promotion": ""}  # fmt: skip
    parts = [f"{short[k]}{'/'.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in tree.items()]  # fmt: skip
    return arm + "[" + " ".join(parts) + "]"


def evaluations(path: str) -> int:
    """Evaluations in one full run: the Hyperband and SHA pruners' resource unit."""
    import yaml

    with open(path, encoding="utf-8") as f:
        t = yaml.safe_load(f)["trials"]
    return round(float(t["epochs"]) / float(t["eval_every"]))


def pruner_of(arm: str, path: str, tree: dict[str, Any]) -> dict[str, Any] | None:
    """The arm's pruner (None: the study file's, a MedianPruner)."""
    e = evaluations(path)
    if arm == "tpe-hyperband":  # three brackets over one run's evaluations
        return {"name": "HyperbandPruner", "min_resource": 1, "max_resource": e,
                "reduction_factor": 3}  # fmt: skip
    if arm == "tpe-sha":  # rungs at 1/4, 1/2 and 1 of the run, half kept: the tree's rungs
        return {"name": "SuccessiveHalvingPruner", "min_resource": max(1, e // 4),
                "reduction_factor": 2, "min_early_stopping_rate": 0}  # fmt: skip
    if arm in TREE_ARMS and tree.get("pruner") == "none":
        return {"name": "NopPruner"}
    return None


def tree_keys(arm: str, tree: dict[str, Any]) -> dict[str, Any]:
    """The tree keys an arm gives: the overrides, and for `tree-sh` the same generations whose
    children only continue (keep x children survive, one child each: successive halving)."""
    from hpsearch.config.tree import DEFAULTS

    keys = {k: v for k, v in tree.items() if k in TREE_KEYS}
    if arm == "tree-sh":
        keep = float(keys.get("keep", DEFAULTS["keep"]))
        children = int(keys.get("children", DEFAULTS["children"]))
        keys.update(keep=min(1.0, keep * children), children=1)
    return keys


def run_arm(workload: str, arm: str, seed: int, budget: float, *, workdir: str,
            tree: dict[str, Any], pbt_every: float, workers: int = 1) -> Run:  # fmt: skip
    path = study_of(workload)
    n = prime(path)
    full = round(full_run_epochs(path) * n)
    label = arm_label(arm, tree, workers)
    here = os.path.join(workdir, f"{workload}-{label}-{seed}".replace(" ", "_"))
    if arm == "ray-pbt":
        from efficiency.pbt import pbt_points, run_pbt

        from hpsearch.config import load_study_file

        s = load_study_file(path)
        # one training iteration (a report and a Ray checkpoint) per perturbation interval
        every, per = max(1, round(pbt_every * full)), 1
        population = max(2, round(budget))
        rows, info = run_pbt(path, seed=seed, population=population, full=full, interval=every,
                             perturb_every=per, workdir=here)  # fmt: skip
        points, wall = pbt_points(rows, s.objective.direction)
        return Run(workload, arm, seed, s.objective.direction, s.objective.metric, full,
                   round(budget * full), wall, points, info)  # fmt: skip
    spend = budget / 2 if arm == "tree-half" else budget
    keys = tree_keys(arm, tree) if arm in TREE_ARMS else {}
    copy = study_copy(path, here, seed=seed, tree=keys or None, budget=spend,
                      pruner=pruner_of(arm, path, tree))  # fmt: skip
    info: dict[str, Any] = {"budget": spend, **({"given": keys} if keys else {})}
    return run_hpsearch(copy, workload=workload, arm=label, seed=seed,
                        classic=arm in CLASSIC_ARMS, full=full, settings_info=info,
                        workers=workers)  # fmt: skip


def arm_label(arm: str, tree: dict[str, Any], workers: int) -> str:
    """`tree[async] x4`: the arm, the tree keys it overrides, and its workers beyond one."""
    label = tree_label(tree, arm) if arm in TREE_ARMS else arm
    return label + (f" x{workers}" if workers > 1 else "")


def benchmark(
    args: argparse.Namespace, tree: dict[str, Any], done: Sequence[Run], meta: dict[str, Any]
) -> list[Run]:
    """Run every workload, seed and arm asked for, but those in `done` with `--skip-done`;
    after each run, the JSON holds everything so far (a killed benchmark loses one run)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = args.workdir or tempfile.mkdtemp(prefix="search-efficiency-")
    runs: list[Run] = []
    if "ray-pbt" in args.arm:
        from efficiency.pbt import ray_started

        ray_started(max(2, round(max(budget_of(args, w) for w in args.workload))))
    try:
        for w in args.workload:
            for i, seed in enumerate(args.seeds):
                # alternate the order of the arms from seed to seed, so that a machine getting
                # slower or faster during the benchmark favours no arm's wall time
                for arm in args.arm if i % 2 == 0 else list(reversed(args.arm)):
                    label = arm_label(arm, tree, args.workers)
                    if args.skip_done and any(
                        (r.workload, r.arm, r.seed) == (w, label, seed) for r in done
                    ):
                        continue
                    t = time.monotonic()
                    print(f"== {w} {arm} seed {seed}", file=sys.stderr, flush=True)
                    run = run_arm(w, arm, seed, budget_of(args, w), workdir=root, tree=tree,
                                  pbt_every=args.pbt_every, workers=args.workers)  # fmt: skip
                    runs.append(run)
                    os.makedirs(args.out, exist_ok=True)
                    save_runs(os.path.join(args.out, f"{args.name}.json"),
                              merge([*done, *runs]), meta)  # fmt: skip
                    print(f"== {w} {run.arm} seed {seed}: best {run.final_best}, "
                          f"{run.total_samples / run.full_samples:.2f} full runs, "
                          f"{len(run.points)} points, {run.wall_s:.1f} s "
                          f"({time.monotonic() - t:.1f} s with set-up)",
                          file=sys.stderr, flush=True)  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return runs


def budget_of(args: argparse.Namespace, workload: str) -> float:
    return float(dict(args.budget or []).get(workload, WORKLOADS[workload][1]))


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         model)  # fmt: skip
    except OSError:
        pass
    import torch

    return (f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")  # fmt: skip


def write(
    runs: Sequence[Run], meta: dict[str, Any], out: str, name: str, show: Sequence[str] = ()
) -> dict[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = {e: os.path.join(out, f"{name}.{e}") for e in ("json", "md", "png")}
    save_runs(paths["json"], runs, meta)
    head = "".join(f"{k}: {v}\n\n" for k, v in meta.items() if k not in ("commands", "walls"))
    walls = meta.get("walls", {})
    head += "".join(f"Command ({walls.get(c, '?')} of wall time): `{c}`\n\n"
                    for c in meta.get("commands", []))  # fmt: skip
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(head + f"Figure: `{name}.png`\n\n" + report.markdown(runs))
    report.draw([r for r in runs if not show or r.arm in show], paths["png"])
    return paths


def _budget(text: str) -> tuple[str, float]:
    w, _, b = text.partition("=")
    if w not in WORKLOADS or not b:
        raise argparse.ArgumentTypeError(
            f"--budget WORKLOAD=FULL_RUNS, workloads {list(WORKLOADS)}"
        )
    return w, float(b)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", choices=list(WORKLOADS))
    p.add_argument("--arm", action="append", choices=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--budget", action="append", type=_budget, help="WORKLOAD=FULL_RUNS")
    p.add_argument("--tree-roots", type=int, help="roots of the tree (default: from the budget)")
    p.add_argument("--tree-rungs", type=float, nargs="+")
    p.add_argument("--tree-keep", type=float)
    p.add_argument("--tree-children", type=int)
    p.add_argument("--tree-probe", type=float)
    p.add_argument(
        "--tree-pruner", choices=("none",), help="no pruner inside the tree's generations"
    )
    p.add_argument("--tree-promotion", choices=("async", "sync"))
    p.add_argument("--workers", type=int, default=1, help="hpsearch workers per search (processes)")
    p.add_argument(
        "--pbt-every",
        type=float,
        default=0.125,
        help="PBT perturbation interval, as a fraction of a full run",
    )
    p.add_argument("--out", default=HERE)
    p.add_argument("--name", default="search_efficiency")
    p.add_argument("--workdir", help="keep the studies here instead of a temp dir")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        help="a JSON file of earlier runs to merge in (repeatable)",
    )
    p.add_argument(
        "--show",
        action="append",
        default=[],
        help="draw only these arms (repeatable; the tables keep every arm)",
    )
    p.add_argument(
        "--skip-done",
        action="store_true",
        help="do not rerun a workload, arm and seed that --from already holds",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    runs: list[Run] = []
    commands: list[str] = []
    walls: dict[str, str] = {}  # command: its wall time
    dates: list[str] = []
    meta: dict[str, Any] = {}
    for src in args.sources:
        doc, more = load_runs(src)
        runs += more
        commands += [c for c in doc.get("commands", []) if c not in commands]
        walls.update(doc.get("walls", {}))
        if "last command's wall time" in doc and doc.get("commands"):
            walls.setdefault(doc["commands"][-1], doc["last command's wall time"])
        dates += [d for d in (doc.get("date"), doc.get("dates")) if isinstance(d, str)]
        meta["machine"] = doc.get("machine", meta.get("machine"))
    if args.arm or not args.sources:
        args.arm = args.arm or list(ARMS)
        tuning = [w for w, (split, _) in WORKLOADS.items() if split == "tuning"]
        args.workload = args.workload or tuning  # a held-out workload only when named
        tree = {k: getattr(args, f"tree_{k}") for k in (*TREE_KEYS, "pruner")
                if getattr(args, f"tree_{k}") is not None}  # fmt: skip
        given = list(argv) if argv is not None else sys.argv[1:]
        commands.append("python " + " ".join([os.path.relpath(__file__), *given]))
        import torch

        torch.set_num_threads(args.threads)
        t0 = time.monotonic()
        runs += benchmark(args, tree, runs, {**meta, "commands": commands, "walls": walls})
        walls[commands[-1]] = f"{time.monotonic() - t0:.0f} s"
        dates.append(dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        meta["machine"] = machine()
    if dates:
        meta["dates"] = f"{min(dates)} to {max(dates)}" if len(set(dates)) > 1 else dates[0]
    meta.update(commands=commands, walls=walls)
    paths = write(merge(runs), meta, args.out, args.name, args.show)
    with open(paths["md"], encoding="utf-8") as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
