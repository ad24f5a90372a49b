"""Running one arm of the benchmark for one seed, to a budget in training samples.

The Optuna arms (TPE + MedianPruner, TPE + HyperbandPruner) run through hpsearch's classic mode
(`--no-fork`: every trial trains from scratch, exactly Optuna's ask-train-report-prune loop, with
the same training code as the forking arms). The single fork and the fork tree run hpsearch's
own schedulers. Every arm's cost is the sum of its trials' `hpsearch.samples_trained` (pruned
and failed trials included) plus a single fork's warm-up; a search stops starting trials once
that reaches the budget (the trial running then finishes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from typing import Any

import yaml

from efficiency.records import ATTR, Run, curve

BIG = 10**6  # a trial count that the budget reaches first


class BudgetSpent(Exception):
    """Raised between trials once the search has trained its budget."""


def study_copy(path: str, workdir: str, *, seed: int, tree: dict[str, Any] | None = None) -> str:
    """A copy of the study file in `workdir` with its own storage and checkpoints and the given
    seed (and tree settings, for the tree arm). Relative task paths are made absolute."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    base = os.path.dirname(os.path.abspath(path))
    module, sep, cls = str(raw["task"]).rpartition(":")
    if sep and module.endswith(".py") and not os.path.isabs(module):
        raw["task"] = f"{os.path.normpath(os.path.join(base, module))}:{cls}"
    raw["seed"] = seed
    raw["storage"] = "sqlite:///" + os.path.join(workdir, "study.db")
    raw["checkpoints"] = {**(raw.get("checkpoints") or {}), "dir": os.path.join(workdir, "ck")}
    if tree:
        raw["tree"] = {**raw["tree"], **tree}
    os.makedirs(workdir, exist_ok=True)
    out = os.path.join(workdir, "study.yaml")
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return out


def full_run_epochs(path: str) -> float:
    """Epochs of one run from scratch over the full budget: a tree's `trials.epochs`, else the
    warm-up's and a trial's together (what a classic trial trains)."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    epochs = float(raw["trials"]["epochs"])
    if "warmup" not in raw:  # the fork tree's form: `trials.epochs` is the full budget
        return epochs
    return epochs + float((raw.get("warmup") or {}).get("epochs") or 0.0)


def spent(study: Any) -> tuple[int, int]:
    """(samples, steps) a study has trained: its trials' own and a single fork's warm-up."""
    samples = int(study.user_attrs.get(ATTR + "warmup_samples", 0) or 0)
    steps = int(study.user_attrs.get(ATTR + "warmup_steps", 0) or 0)
    for t in study.get_trials(deepcopy=False):
        samples += int(t.user_attrs.get(ATTR + "samples_trained", 0) or 0)
        steps += int(t.user_attrs.get(ATTR + "steps_trained", 0) or 0)
    return samples, steps


def _worker_class(cap: int) -> type:
    from hpsearch.search.worker import Worker

    class BudgetWorker(Worker):
        def run_trial(self, trials: Any, job: Any) -> Any:
            out = super().run_trial(trials, job)
            if cap and spent(self.session.study)[0] >= cap:
                raise BudgetSpent
            return out

    return BudgetWorker


def run_hpsearch(
    study_file: str, *, workload: str, arm: str, seed: int, classic: bool, cap: int, full: int,
    settings_info: dict[str, Any] | None = None,
) -> Run:  # fmt: skip
    """Run one search in this process until the budget `cap` (samples; 0: the study's own end)
    and read its trials back. The session is opened (task and data checked) before timing."""
    import optuna

    from hpsearch.search.control import StopFlag
    from hpsearch.search.session import Session

    session = Session.open(study_file, classic=classic)
    try:
        s = session.settings
        target = s.trials.n if not cap else BIG
        stop = StopFlag()
        started = dt.datetime.now()  # Optuna stamps trials with naive local datetime.now()
        t0 = time.monotonic()
        with stop.installed(), contextlib.suppress(BudgetSpent):
            _worker_class(cap)(session, stop=stop).run(target)
        wall = time.monotonic() - t0
        name, url = session.study.study_name, s.storage
    finally:
        session.close()
    study = optuna.load_study(study_name=name, storage=url)
    warm_steps = int(study.user_attrs.get(ATTR + "warmup_steps", 0) or 0)
    warm_samples = int(study.user_attrs.get(ATTR + "warmup_samples", 0) or 0)
    tree = getattr(s, "tree", None) if not classic else None
    fixed = dict(tree.hparams) if tree is not None else dict(s.warmup.hparams or {})
    points = curve(
        study.get_trials(deepcopy=False), direction=s.objective.direction, started=started,
        extra_steps=0 if classic else warm_steps, extra_samples=0 if classic else warm_samples,
        probe_samples=round(tree.probe * full) if tree is not None else 0,
        batch_size=int(fixed.get("batch_size", 1)),
    )  # fmt: skip
    info = dict(settings_info or {})
    info.update(pruner=s.pruner.name, sampler=s.sampler.name, trials=len(points))
    if not classic and warm_samples:
        info.update(warmup_samples=warm_samples)
    return Run(workload, arm, seed, s.objective.direction, s.objective.metric, full, cap, wall,
               points, info)  # fmt: skip


def prime(study_file: str) -> int:
    """Pay a process's one-time costs (imports, first kernels, the data's first read) before
    anything is timed; return the training set's size."""
    import torch

    from hpsearch.config import load_study_file, warmup_hparams
    from hpsearch.config.taskload import load_task

    settings = load_study_file(study_file)
    task = load_task(settings.task, study_path=study_file)()
    train, _ = task.datasets()
    hp = dict(warmup_hparams(settings))
    tree = getattr(settings, "tree", None)
    hp.update(tree.hparams if tree is not None else {})
    for name, p in settings.search_space.items():  # the tree's file has no warm-up to lean on
        hp.setdefault(name, p.choices[0] if p.choices else p.low)
    model = task.model(hp)
    batch = task.collate([train[i] for i in range(min(2, len(train)))])
    task.loss(model, batch).backward()
    torch.manual_seed(0)
    return len(train)
