"""Search efficiency: the same study run classic (`--no-fork`) and forking, side by side.

Run from the repository root, by hand (it trains for real; see benchmarks/RESULTS.md for timings):

    python benchmarks/search_efficiency.py --study studies/quickstart.yaml \
        --study studies/chars.yaml --seeds 0 1 2

For every study file and seed it runs the study twice in this process, from scratch, in a
temporary directory -- once classic, once forking, same sampler, pruner, search space, trial count
and budgets (the file's own settings; only `seed`, and `trials.n` with `--trials`, are
overridden) -- and reads both Optuna studies back. After every finished trial (in order of
completion) it records the cumulative training steps and samples, the wall time since the run
began, and the best value so far. Forking mode counts its warm-up once, before its first trial.

It reports, per seed and over seeds:
- the training steps (and samples, and wall time) forking mode needed to first reach classic
  mode's final best value, as a fraction of classic mode's total;
- both modes' final best values;
and draws the best value so far against cumulative training steps, both modes, all seeds.

Outputs in `--out` (default `benchmarks/`): `search_efficiency.png` (the figure),
`search_efficiency.md` (the tables) and `search_efficiency.json` (every curve, so that
`--from search_efficiency.json` redraws the figure and tables without training).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

ATTR = "hpsearch."
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
MODES = ("classic", "fork")


# -- the records --------------------------------------------------------------------------------


@dataclass
class Point:
    """The state of a search right after one of its trials finished."""

    trial: int
    state: str
    value: float | None
    steps: int  # cumulative training steps (forking: the warm-up's included)
    samples: int
    wall_s: float  # since the run began (session open, data, warm-up, trials)
    best: float | None  # best value of a completed trial so far
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    study: str  # the study file's `name`
    mode: str  # classic | fork
    seed: int
    direction: str
    metric: str
    warmup_steps: int
    warmup_samples: int
    wall_s: float
    points: list[Point] = field(default_factory=list)

    @property
    def final_best(self) -> float | None:
        return self.points[-1].best if self.points else None

    @property
    def total_steps(self) -> int:
        return self.points[-1].steps if self.points else self.warmup_steps

    @property
    def total_samples(self) -> int:
        return self.points[-1].samples if self.points else self.warmup_samples


def curve(
    trials: Sequence[Any],
    *,
    direction: str,
    warmup_steps: int = 0,
    warmup_samples: int = 0,
    started: dt.datetime,
) -> list[Point]:
    """Per-trial points of one search from its Optuna trials (FrozenTrial-like objects).

    Trials are taken in order of completion; the warm-up (0 for classic mode) is counted once,
    before the first trial. Only completed trials count towards the best value, as in Optuna.
    """
    done = [t for t in trials if t.state.name in FINISHED and t.datetime_complete is not None]
    done.sort(key=lambda t: (t.datetime_complete, t.number))
    better = max if direction == "maximize" else min
    steps, samples, best = warmup_steps, warmup_samples, None
    points = []
    for t in done:
        steps += int(t.user_attrs.get(ATTR + "steps_trained", 0))
        samples += int(t.user_attrs.get(ATTR + "samples_trained", 0))
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        if t.state.name == "COMPLETE" and value is not None:
            best = value if best is None else better(best, value)
        wall = (t.datetime_complete - started).total_seconds()
        points.append(
            Point(t.number, t.state.name, value, steps, samples, wall, best, dict(t.params))
        )
    return points


def reached(best: float | None, target: float, direction: str) -> bool:
    if best is None:
        return False
    return best >= target if direction == "maximize" else best <= target


@dataclass
class Pair:
    """One seed's classic and forking runs compared."""

    seed: int
    classic_best: float | None
    fork_best: float | None
    classic_steps: int
    fork_steps: int
    classic_samples: int
    fork_samples: int
    classic_wall_s: float
    fork_wall_s: float
    # forking mode's cost when its best first reached classic's final best (None: never did)
    reach_steps: int | None
    reach_samples: int | None
    reach_wall_s: float | None
    # the converse: classic mode's steps when its best first reached forking's final best
    converse_steps: int | None

    @property
    def steps_ratio(self) -> float | None:
        return None if self.reach_steps is None else self.reach_steps / self.classic_steps

    @property
    def samples_ratio(self) -> float | None:
        return None if self.reach_samples is None else self.reach_samples / self.classic_samples

    @property
    def wall_ratio(self) -> float | None:
        return None if self.reach_wall_s is None else self.reach_wall_s / self.classic_wall_s


def compare(classic: Run, fork: Run) -> Pair:
    """Where forking mode first matched classic mode's final best, as a cost (and the converse)."""
    hit = first_reaching(fork, classic.final_best)
    back = first_reaching(classic, fork.final_best)
    return Pair(
        classic.seed, classic.final_best, fork.final_best,
        classic.total_steps, fork.total_steps, classic.total_samples, fork.total_samples,
        classic.wall_s, fork.wall_s,
        hit.steps if hit else None, hit.samples if hit else None, hit.wall_s if hit else None,
        back.steps if back else None,
    )  # fmt: skip


def first_reaching(run: Run, target: float | None) -> Point | None:
    """The first point of `run` whose best so far is at least as good as `target`."""
    if target is None:
        return None
    return next((p for p in run.points if reached(p.best, target, run.direction)), None)


# -- running the studies ------------------------------------------------------------------------


def study_copy(path: str, workdir: str, *, seed: int, trials: int | None) -> str:
    """A copy of the study file in `workdir` with its own storage and checkpoints, the given seed,
    and optionally another trial count. Relative task paths are made absolute."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    base = os.path.dirname(os.path.abspath(path))
    module, sep, cls = str(raw["task"]).rpartition(":")
    if sep and module.endswith(".py") and not os.path.isabs(module):
        raw["task"] = f"{os.path.normpath(os.path.join(base, module))}:{cls}"
    raw["seed"] = seed
    raw["storage"] = "sqlite:///" + os.path.join(workdir, "study.db")
    raw["checkpoints"] = {**(raw.get("checkpoints") or {}), "dir": os.path.join(workdir, "ck")}
    if trials is not None:
        raw["trials"] = {**raw["trials"], "n": trials}
    os.makedirs(workdir, exist_ok=True)
    out = os.path.join(workdir, "study.yaml")
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return out


def run_mode(study_file: str, mode: str, seed: int) -> Run:
    """Run one search to the end in this process and read its trials back."""
    import optuna

    from hpsearch.config import load_study_file
    from hpsearch.search.runner import run_study

    settings = load_study_file(study_file)
    name = settings.name + ("-classic" if mode == "classic" else "")
    started = dt.datetime.now()  # Optuna stamps trials with naive local datetime.now()
    t0 = time.monotonic()
    run_study(study_file, classic=mode == "classic")
    wall = time.monotonic() - t0
    study = optuna.load_study(study_name=name, storage=settings.storage)
    warm = int(study.user_attrs.get(ATTR + "warmup_steps", 0)) if mode == "fork" else 0
    warm_s = int(study.user_attrs.get(ATTR + "warmup_samples", 0)) if mode == "fork" else 0
    direction = settings.objective.direction
    points = curve(
        study.get_trials(deepcopy=False), direction=direction,
        warmup_steps=warm, warmup_samples=warm_s, started=started,
    )  # fmt: skip
    return Run(settings.name, mode, seed, direction, settings.objective.metric, warm, warm_s,
               wall, points)  # fmt: skip


def prime(study_file: str) -> None:
    """Pay the one-time costs of a process (imports, first kernels, the data set's first read)
    before anything is timed, so that they do not land on whichever mode runs first."""
    import torch

    from hpsearch.config import load_study_file, warmup_hparams
    from hpsearch.config.taskload import load_task

    settings = load_study_file(study_file)
    task = load_task(settings.task, study_path=study_file)()
    train, _ = task.datasets()
    model = task.model(warmup_hparams(settings))
    batch = task.collate([train[i] for i in range(min(2, len(train)))])
    task.loss(model, batch).backward()
    torch.manual_seed(0)  # leave no trace: every run seeds itself anyway


def benchmark(
    studies: Sequence[str],
    seeds: Sequence[int],
    *,
    trials: int | None = None,
    workdir: str | None = None,
    keep: bool = False,
) -> list[Run]:
    """Run every study file in both modes for every seed; return the runs.

    The order of the two modes alternates with the seed, so that a machine that gets slower or
    faster during the benchmark does not favour one mode's wall time.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = workdir or tempfile.mkdtemp(prefix="search-efficiency-")
    runs: list[Run] = []
    try:
        for path in studies:
            prime(path)
            for i, seed in enumerate(seeds):
                for mode in MODES if i % 2 == 0 else reversed(MODES):
                    stem = os.path.splitext(os.path.basename(path))[0]
                    here = os.path.join(root, f"{stem}-{seed}-{mode}")
                    copy = study_copy(path, here, seed=seed, trials=trials)
                    print(f"== {path} seed {seed}: {mode}", file=sys.stderr, flush=True)
                    run = run_mode(copy, mode, seed)
                    runs.append(run)
                    print(
                        f"== {path} seed {seed} {mode}: best {run.final_best}, "
                        f"{run.total_steps} steps, {run.wall_s:.1f}s",
                        file=sys.stderr, flush=True,
                    )  # fmt: skip
    finally:
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return runs


# -- the report ---------------------------------------------------------------------------------


def pairs_of(runs: Sequence[Run]) -> dict[str, list[Pair]]:
    """Per study name (in the order the runs came), one Pair per seed (in seed order)."""
    by = {(r.study, r.seed, r.mode): r for r in runs}
    out: dict[str, list[Pair]] = {}
    order = list(dict.fromkeys(r.study for r in runs))
    for study, seed in sorted(
        {(r.study, r.seed) for r in runs}, key=lambda k: (order.index(k[0]), k[1])
    ):
        if (study, seed, "classic") in by and (study, seed, "fork") in by:
            pair = compare(by[study, seed, "classic"], by[study, seed, "fork"])
            out.setdefault(study, []).append(pair)
    return out


def paired_trials(runs: Sequence[Run]) -> dict[str, list[tuple[float, float]]]:
    """Per study, (classic value, forking value) of the trials that have the same number and the
    same params in both modes and completed in both. hpsearch seeds the sampler by (seed, trial
    number), so the sampler's random start-up trials are such pairs: the same hyperparameters
    trained from scratch and forked."""
    by = {(r.study, r.seed, r.mode): r for r in runs}
    out: dict[str, list[tuple[float, float]]] = {}
    for (study, seed, mode), fork in by.items():
        classic = by.get((study, seed, "classic"))
        if mode != "fork" or classic is None:
            continue
        done = {p.trial: p for p in classic.points if p.state == "COMPLETE" and p.params}
        for p in fork.points:
            q = done.get(p.trial)
            if p.state == "COMPLETE" and q is not None and q.params == p.params:
                assert q.value is not None and p.value is not None
                out.setdefault(study, []).append((q.value, p.value))
    return out


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _mean_sd(xs: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [x for x in xs if x is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def summary(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Numbers over seeds for one study. Ratios are medians over the seeds that reached the target;
    `reached` says how many did."""
    c_mean, c_sd = _mean_sd([p.classic_best for p in pairs])
    f_mean, f_sd = _mean_sd([p.fork_best for p in pairs])
    diffs = [
        p.fork_best - p.classic_best
        for p in pairs
        if p.fork_best is not None and p.classic_best is not None
    ]
    d_mean, d_sd = _mean_sd(diffs)
    return {
        "seeds": len(pairs),
        "reached": sum(p.reach_steps is not None for p in pairs),
        "steps_ratio": _median([p.steps_ratio for p in pairs]),
        "samples_ratio": _median([p.samples_ratio for p in pairs]),
        "wall_ratio": _median([p.wall_ratio for p in pairs]),
        "total_steps_ratio": _median([p.fork_steps / p.classic_steps for p in pairs]),
        "total_samples_ratio": _median([p.fork_samples / p.classic_samples for p in pairs]),
        "total_wall_ratio": _median([p.fork_wall_s / p.classic_wall_s for p in pairs]),
        "classic_best": (c_mean, c_sd),
        "fork_best": (f_mean, f_sd),
        "diff": (d_mean, d_sd),
    }


def _f(x: float | None, spec: str = ".4f") -> str:
    return "not reached" if x is None else format(x, spec)


def _ratio(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.3f} (1/{1 / x:.1f})" if x > 0 else "0"


def markdown(runs: Sequence[Run]) -> str:
    """The tables: per study, one row per seed, then the medians and means over seeds."""
    meta = {r.study: (r.metric, r.direction) for r in runs}
    same = paired_trials(runs)
    lines: list[str] = []
    for study, pairs in pairs_of(runs).items():
        metric, direction = meta[study]
        s = summary(pairs)
        lines += [
            f"### {study} ({metric}, {direction})",
            "",
            "| seed | classic best | forking best | classic steps | forking steps "
            "| forking steps to reach classic's best | ÷ classic steps | ÷ classic samples "
            "| ÷ classic wall time | classic steps to reach forking's best |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for p in pairs:
            lines.append(
                f"| {p.seed} | {_f(p.classic_best)} | {_f(p.fork_best)} | {p.classic_steps} "
                f"| {p.fork_steps} | {_f(p.reach_steps, 'd')} | {_ratio(p.steps_ratio)} "
                f"| {_ratio(p.samples_ratio)} | {_ratio(p.wall_ratio)} "
                f"| {_f(p.converse_steps, 'd')} |"
            )
        cm, cs = s["classic_best"]
        fm, fs = s["fork_best"]
        dm, ds = s["diff"]
        if s["reached"]:
            where = "" if s["reached"] == s["seeds"] else " (median over the seeds that did)"
            reach = (
                f"- forking reached classic's final best in {s['reached']} of {s['seeds']} "
                f"seeds, after **{_ratio(s['steps_ratio'])} of classic's training steps**, "
                f"{_ratio(s['samples_ratio'])} of its samples and {_ratio(s['wall_ratio'])} of "
                f"its wall time{where}"
            )
        else:
            reach = f"- forking did not reach classic's final best in any of {s['seeds']} seeds"
        lines += [
            "",
            reach,
            f"- whole searches: forking trained {_f(s['total_steps_ratio'], '.3f')} of classic's "
            f"steps ({_f(s['total_samples_ratio'], '.3f')} of its samples) in "
            f"{_f(s['total_wall_ratio'], '.3f')} of its wall time (medians over seeds)",
            f"- final best {metric}, mean ± sd over seeds: classic {_f(cm)} ± {_f(cs)}, "
            f"forking {_f(fm)} ± {_f(fs)}; forking − classic per seed: {_f(dm, '+.4f')} ± "
            f"{_f(ds)} ({'higher' if direction == 'maximize' else 'lower'} is better)",
        ]
        if same.get(study):
            sign = 1 if direction == "maximize" else -1
            wins = sum(sign * (f - c) > 0 for c, f in same[study])
            med = statistics.median(f - c for c, f in same[study])
            lines.append(
                f"- trials with the same hyperparameters in both modes (the sampler's random "
                f"start-up), completed in both: forking better in {wins} of {len(same[study])}; "
                f"median forking − classic {med:+.4f}"
            )
        lines.append("")
    return "\n".join(lines)


def plot_data(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """What the figure draws, per study: every run's best value so far against its cumulative
    steps and samples, and the index of the point where forking first reached classic's final
    best (None where it did not)."""
    out: dict[str, dict[str, Any]] = {}
    classic_best = {(r.study, r.seed): r.final_best for r in runs if r.mode == "classic"}
    for r in runs:
        d = out.setdefault(r.study, {"metric": r.metric, "direction": r.direction, "lines": []})
        points = [p for p in r.points if p.best is not None]
        reach = None
        target = classic_best.get((r.study, r.seed))
        if r.mode == "fork" and target is not None:
            hits = [i for i, p in enumerate(points) if reached(p.best, target, r.direction)]
            reach = hits[0] if hits else None
        d["lines"].append({
            "mode": r.mode, "seed": r.seed, "reach": reach,
            "steps": [p.steps for p in points], "samples": [p.samples for p in points],
            "best": [p.best for p in points],
        })  # fmt: skip
    return out


AXES = {
    "steps": "cumulative training steps (forking: warm-up included)",
    "samples": "cumulative training samples (forking: warm-up included)",
}


def draw(data: dict[str, dict[str, Any]], path: str) -> None:
    """Top row: best value so far against training steps; bottom row: against samples (the
    fairer cost where the batch size is searched). One column per study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"classic": "#4c72b0", "fork": "#dd8452"}
    names = {"classic": "classic (--no-fork)", "fork": "forking"}
    cols = len(data)
    fig, axes = plt.subplots(2, cols, figsize=(6.4 * cols, 8.4), squeeze=False)
    for row, key in enumerate(AXES):
        for ax, (study, d) in zip(axes[row], data.items(), strict=True):
            shown: set[str] = set()
            for line in d["lines"]:
                if not line["best"]:
                    continue
                mode, x, y = line["mode"], line[key], line["best"]
                ax.step(x, y, where="post", color=colours[mode], alpha=0.8, lw=1.4,
                        label=names[mode] if mode not in shown else None)  # fmt: skip
                shown.add(mode)
                ax.plot(x[-1], y[-1], "o", color=colours[mode], ms=4)
                if line["reach"] is not None:
                    i = line["reach"]
                    ax.plot(x[i], y[i], "*", color="black", ms=10, zorder=5,
                            label="forking first reaches classic's final best"
                            if "reach" not in shown else None)  # fmt: skip
                    shown.add("reach")
            ax.set_xlabel(AXES[key])
            ax.set_ylabel(f"best {d['metric']} so far")
            better = "higher" if d["direction"] == "maximize" else "lower"
            ax.set_title(f"{study}: one line per mode and seed ({better} is better)")
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right" if d["direction"] == "maximize" else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    return (
        f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def save(runs: Sequence[Run], out: str, *, command: str) -> dict[str, str]:
    """Write the JSON, the markdown tables and the figure into `out`; return their paths."""
    os.makedirs(out, exist_ok=True)
    paths = {ext: os.path.join(out, f"search_efficiency.{ext}") for ext in ("json", "md", "png")}
    doc = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command,
        "runs": [asdict(r) for r in runs],
    }
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    write_report(doc, runs, paths)
    return paths


def write_report(doc: dict[str, Any], runs: Sequence[Run], paths: dict[str, str]) -> None:
    head = (
        f"Measured {doc['date']} on {doc['machine']}.\n\nCommand: `{doc['command']}`\n\n"
        f"Figure: `{os.path.basename(paths['png'])}`\n\n"
    )
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(head + markdown(runs))
    draw(plot_data(runs), paths["png"])


def load(path: str) -> tuple[dict[str, Any], list[Run]]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    runs = []
    for r in doc["runs"]:
        points = [Point(**p) for p in r.pop("points")]
        runs.append(Run(**r, points=points))
    return doc, runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", action="append", help="a study file (repeat for several)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, help="override trials.n of every study file")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--workdir", help="keep the studies here instead of a temp dir")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--from", dest="source", help="redraw from a search_efficiency.json")
    args = parser.parse_args(argv)
    if args.source:
        doc, runs = load(args.source)
        os.makedirs(args.out, exist_ok=True)
        paths = {e: os.path.join(args.out, f"search_efficiency.{e}") for e in ("md", "png")}
        write_report(doc, runs, paths)
    else:
        if not args.study:
            parser.error("give at least one --study (or --from a JSON file)")
        given = list(argv) if argv is not None else sys.argv[1:]
        command = "python " + " ".join([os.path.relpath(__file__), *given])
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            runs = benchmark(args.study, args.seeds, trials=args.trials, workdir=args.workdir)
            paths = save(runs, args.out, command=command)
        finally:
            torch.set_num_threads(threads)
    with open(paths["md"], encoding="utf-8") as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
