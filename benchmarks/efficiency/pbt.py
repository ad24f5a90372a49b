"""The Ray Tune PopulationBasedTraining arm, run for real on hpsearch's own training loop.

Each PBT member is an hpsearch `Trainer` over the same Task (model, optimizer, loss, evaluate,
datasets) and the same LR schedule as the other arms: it trains the full budget, one
`training_iteration` per evaluation interval, and reports its metric with a Ray checkpoint of
the whole training state (model, optimizer, data position, RNG). When PBT exploits, the member
restarts from the donor's checkpoint and the explored values are applied by hpsearch's `fork`,
the same code that changes hyperparameters in a forked hpsearch trial.

PBT's documented defaults are kept: quantile_fraction 0.25, resample_probability 0.25,
perturbation_factors (1.2, 0.8), asynchronous. Two settings cannot be defaults: the default
`time_attr` is wall time with a 60 s `perturbation_interval`, which on a shared machine would
tie perturbations to the load (and, for these short runs, never fire); we count training
iterations instead, one per eighth of the run (a report with a checkpoint each), and perturb at
every one. And a perturbed value is clipped to the
search space (through PBT's `custom_explore_fn`), so that ×1.2 cannot push dropout past 1.

Cost: every member trains the full budget from scratch, so the population size is the budget
in full runs. Every evaluation a member reports counts as a candidate for the best so far (its
checkpoint is kept): generous to PBT, which the Optuna arms do not get for pruned trials.

Ray starts once per process (`ray_started`), before any timing; a run's wall time runs from its
first member's start to its last report.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from typing import Any

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CACHE: dict[str, Any] = {}  # per Ray worker process: the task and its datasets


def ray_started(num_cpus: int) -> None:
    """Start Ray once for this process; its workers import this package and hpsearch."""
    import ray

    if ray.is_initialized():
        return
    paths = [BENCH_DIR, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # Ray runs its workers at niceness 15: on a machine shared with other jobs they would get
    # almost no CPU (1 % each, measured), and PBT's wall time would measure the neighbours
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")  # fmt: skip


def tune_space(space: dict[str, Any], forkable: set[str]) -> tuple[dict, dict, dict]:
    """The study file's search space as Ray Tune's: (param_space, hyperparam_mutations, bounds).
    Keys a fork cannot change are sampled once per member and never mutated."""
    from ray import tune

    params, mutations, bounds = {}, {}, {}
    for name, p in space.items():
        if p.kind == "categorical":
            dom: Any = tune.choice(list(p.choices))
            mut: Any = list(p.choices)
        elif p.kind == "int":
            dom = tune.lograndint(p.low, p.high + 1) if p.log else tune.randint(p.low, p.high + 1)
            mut, bounds[name] = dom, (p.low, p.high)
        else:
            dom = tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)
            mut, bounds[name] = dom, (p.low, p.high)
        params[name] = dom
        if name in forkable:
            mutations[name] = mut
    return params, mutations, bounds


class Clip:
    """PBT's custom_explore_fn: keep perturbed values inside the search space."""

    def __init__(self, bounds: dict[str, tuple[float, float]]) -> None:
        self.bounds = bounds

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for k, (lo, hi) in self.bounds.items():
            if k in config:
                v = min(max(config[k], lo), hi)
                config[k] = round(v) if isinstance(config[k], int) else float(v)
        return config


def _task(study: str) -> tuple[Any, Any, Any]:
    if study not in _CACHE:
        from hpsearch.config import load_study_file
        from hpsearch.config.taskload import load_task

        settings = load_study_file(study)
        task = load_task(settings.task, study_path=study)()
        _CACHE[study] = (settings, task, task.datasets())
    return _CACHE[study]


def train_member(config: dict[str, Any], bench: dict[str, Any]) -> None:
    """One PBT member (a Ray Tune function trainable)."""
    import torch
    from ray import tune

    from hpsearch.training import Budget, Trainer
    from hpsearch.training.fork import fork
    from hpsearch.training.schedule import Schedule

    started = time.time()
    torch.set_num_threads(1)
    settings, task, data = _task(bench["study"])
    member = int(tune.get_context().get_trial_name().rsplit("_", 1)[-1])
    hp = {**bench["fixed"], **{k: config[k] for k in bench["keys"]}}
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            blob = torch.load(os.path.join(d, "state.pt"), weights_only=False)
        trainer = Trainer.restore(task, blob["tensors"], blob["state"], datasets=data)
        fork(trainer, {k: hp[k] for k in bench["forkable"] if k in hp})
    else:
        sched = bench["schedule"]
        trainer = Trainer.create(
            task, hp, seed=bench["seed"] * 1000 + member, datasets=data,
            schedule=Schedule(**sched) if sched else None, total_samples=bench["full"],
            training=settings.training,
        )  # fmt: skip
    full, every = bench["full"], bench["interval"]
    while trainer.progress.samples < full:
        s0, k0 = trainer.progress.samples, trainer.progress.step
        trainer.begin_segment()
        metrics = trainer.train(Budget(samples=min(every, full - s0)))
        value = float(metrics[bench["metric"]])
        row = {
            "member": member, "start": started, "t": time.time(), "value": value,
            "samples": trainer.progress.samples - s0, "steps": trainer.progress.step - k0,
            "position": trainer.progress.samples,
            "params": {k: trainer.hparams[k] for k in bench["keys"]},
        }  # fmt: skip
        with open(bench["log"], "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        with tempfile.TemporaryDirectory() as d:
            tensors, state = trainer.state()
            torch.save({"tensors": tensors, "state": state}, os.path.join(d, "state.pt"))
            tune.report({bench["metric"]: value, "position": trainer.progress.samples},
                        checkpoint=tune.Checkpoint.from_directory(d))  # fmt: skip


def run_pbt(
    study: str, *, seed: int, population: int, full: int, interval: int, perturb_every: int,
    workdir: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Run PBT to the end; return its reports in order of arrival, and its settings."""
    import numpy as np
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from hpsearch.config import FORKABLE, load_study_file, warmup_hparams

    settings = load_study_file(study)
    random.seed(seed)  # PBT explores with `random`, Tune samples domains with numpy
    np.random.seed(seed)
    forkable = set(FORKABLE)
    params, mutations, bounds = tune_space(dict(settings.search_space), forkable)
    sched = settings.schedule
    log = os.path.join(workdir, "reports.jsonl")
    os.makedirs(workdir, exist_ok=True)
    bench = {
        "study": study, "seed": seed, "full": full, "interval": interval, "log": log,
        "metric": settings.objective.metric, "keys": list(params), "forkable": sorted(forkable),
        "fixed": {k: v for k, v in warmup_hparams(settings).items() if k not in params},
        "schedule": None if sched is None else
        {"name": sched.name, "warmup": sched.warmup, "final": sched.final, "decay": sched.decay},
    }  # fmt: skip
    pbt = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=perturb_every,
        hyperparam_mutations=mutations, quantile_fraction=0.25, resample_probability=0.25,
        perturbation_factors=(1.2, 0.8), custom_explore_fn=Clip(bounds),
    )  # fmt: skip
    tuner = tune.Tuner(
        tune.with_parameters(train_member, bench=bench),
        param_space=params,
        tune_config=tune.TuneConfig(
            scheduler=pbt,
            num_samples=population,
            max_concurrent_trials=population,
            metric=settings.objective.metric,
            mode=settings.objective.direction[:3],
            search_alg=BasicVariantGenerator(random_state=seed),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"pbt-{seed}",
            storage_path=os.path.join(workdir, "ray"),
            verbose=0,
        ),
    )
    tuner.fit()
    with open(log, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rows.sort(key=lambda r: r["t"])
    info = {
        "population": population, "perturbation_interval": perturb_every,
        "time_attr": "training_iteration", "iteration_samples": interval,
        "quantile_fraction": 0.25, "resample_probability": 0.25,
        "perturbation_factors": [1.2, 0.8], "ray": _ray_version(),
    }  # fmt: skip
    return rows, info


def pbt_points(rows: list[dict[str, Any]], direction: str) -> tuple[list[Any], float]:
    """The PBT reports as curve points, and the wall time from the first member's start."""
    from efficiency.records import Point, better

    if not rows:
        return [], 0.0
    t0 = min(r["start"] for r in rows)
    pick = better(direction)
    steps = samples = 0
    best = None
    points = []
    for r in rows:
        steps += r["steps"]
        samples += r["samples"]
        v = r["value"] if math.isfinite(r["value"]) else None
        if v is not None:
            best = v if best is None else pick(best, v)
        points.append(Point(r["member"], "COMPLETE", v, steps, samples, r["t"] - t0, best,
                            r["params"]))  # fmt: skip
    return points, rows[-1]["t"] - t0


def _ray_version() -> str:
    import ray

    return ray.__version__
