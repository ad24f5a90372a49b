"""Search efficiency, side by side (issue 14): Optuna TPE + MedianPruner (classic), TPE +
HyperbandPruner, Ray Tune's PopulationBasedTraining, hpsearch's single fork and its fork tree,
on the same tasks, search spaces and budget, cost counted in training samples.

Run from the repository root, by hand (it trains for real; see benchmarks/RESULTS.md):

    python benchmarks/search_efficiency.py --seeds 0 1 2 3 4            # everything
    python benchmarks/search_efficiency.py --workload digits --arm tree --tree-roots 8 \
        --from benchmarks/search_efficiency.json                      # one arm, merged in

Every arm of a workload reads its study file `benchmarks/studies/<workload>-<arm>.yaml` (Ray PBT
reads the classic one) and gets the same budget, `--budget` full runs from scratch (default: the
workload's, below), counted in samples: every trial, root, probe, pruned trial and warm-up. The
Optuna arms and the single fork stop starting trials once they have trained the budget; PBT's
population is the budget; the tree's size follows from its settings (`--tree-*`).

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
ARMS = ("tpe-median", "tpe-hyperband", "ray-pbt", "fork", "tree")
# the default budget of each workload, in full runs from scratch, sized for 5 arms x 5 seeds of all
# three on the 2-core machine of benchmarks/RESULTS.md (its section says what that took)
WORKLOADS = {"digits": 8, "cnn": 4, "chars": 5}
TREE_KEYS = ("roots", "rungs", "keep", "children", "probe")


def study_of(workload: str, arm: str) -> str:
    return os.path.join(STUDIES, f"{workload}-{'tpe-median' if arm == 'ray-pbt' else arm}.yaml")


def tree_label(tree: dict[str, Any]) -> str:
    """`tree` for the study file's own settings, else the overrides in the arm's name."""
    if not tree:
        return "tree"
    short = {"roots": "r", "rungs": "rungs", "keep": "k", "children": "c", "probe": "p"}
    parts = [f"{short[k]}{'/'.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in tree.items()]  # fmt: skip
    return "tree[" + " ".join(parts) + "]"


def run_arm(workload: str, arm: str, seed: int, budget: float, *, workdir: str,
            tree: dict[str, Any], pbt_every: float) -> Run:  # fmt: skip
    path = study_of(workload, arm)
    n = prime(path)
    full = round(full_run_epochs(path) * n)
    cap = round(budget * full)
    label = tree_label(tree) if arm == "tree" else arm
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
                   population * full, wall, points, info)  # fmt: skip
    given = dict(tree) if arm == "tree" else {}
    if isinstance(given.get("roots"), str):  # "0.5B": half the budget in full runs
        given["roots"] = max(1, round(float(given["roots"].rstrip("B")) * budget))
    copy = study_copy(path, here, seed=seed, tree=given or None)
    info = {**given, "roots_given": tree["roots"]} if isinstance(tree.get("roots"), str) else given
    return run_hpsearch(copy, workload=workload, arm=label, seed=seed, classic=arm in
                        ("tpe-median", "tpe-hyperband"), cap=0 if arm == "tree" else cap,
                        full=full, settings_info=info)  # fmt: skip


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
                    label = tree_label(tree) if arm == "tree" else arm
                    if args.skip_done and any(
                        (r.workload, r.arm, r.seed) == (w, label, seed) for r in done
                    ):
                        continue
                    t = time.monotonic()
                    print(f"== {w} {arm} seed {seed}", file=sys.stderr, flush=True)
                    run = run_arm(w, arm, seed, budget_of(args, w), workdir=root, tree=tree,
                                  pbt_every=args.pbt_every)  # fmt: skip
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
    return float(dict(args.budget or []).get(workload, WORKLOADS[workload]))


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


def _roots(text: str) -> int | str:
    try:
        return int(text) if not text.endswith("B") else (float(text[:-1]), text)[1]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tree-roots {text}: a number, or e.g. 0.5B") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", choices=list(WORKLOADS))
    p.add_argument("--arm", action="append", choices=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--budget", action="append", type=_budget, help="WORKLOAD=FULL_RUNS")
    p.add_argument(
        "--tree-roots",
        type=_roots,
        help="roots of the tree: a number, or a multiple of the budget such as 0.5B",
    )
    p.add_argument("--tree-rungs", type=float, nargs="+")
    p.add_argument("--tree-keep", type=float)
    p.add_argument("--tree-children", type=int)
    p.add_argument("--tree-probe", type=float)
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
        args.workload = args.workload or list(WORKLOADS)
        tree = {k: getattr(args, f"tree_{k}") for k in TREE_KEYS
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
