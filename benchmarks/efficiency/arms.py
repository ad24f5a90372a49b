"""Running one arm of the benchmark for one seed, to a budget in full runs.

Every hpsearch and Optuna arm runs through hpsearch with the study file's `trials.budget` (issue
23): the Optuna arms (TPE with a MedianPruner, a HyperbandPruner or a SuccessiveHalvingPruner)
in classic mode (`--no-fork`: every trial from scratch, exactly Optuna's ask-train-report-prune
loop, with the same training code and LR schedule as the forking arms), which stops starting
trials once it has spent the budget (the trial running then finishes); the fork trees with their
shape sized from the budget. Cost is the sum of the trials' `hpsearch.samples_trained` (pruned
and failed trials, roots and probes included, each once) plus a single fork's warm-up.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import yaml

from efficiency.records import ATTR, Run, curve

BIG = 10**9  # a trial count that the budget reaches first


def study_copy(
    path: str, workdir: str, *, seed: int, tree: dict[str, Any] | None = None,
    budget: float | None = None, pruner: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """A copy of the study file in `workdir` with its own storage and checkpoints and the given
    seed (and budget, pruner and tree keys). Relative task paths are made absolute."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    base = os.path.dirname(os.path.abspath(path))
    module, sep, cls = str(raw["task"]).rpartition(":")
    if sep and module.endswith(".py") and not os.path.isabs(module):
        raw["task"] = f"{os.path.normpath(os.path.join(base, module))}:{cls}"
    raw["seed"] = seed
    raw["storage"] = "sqlite:///" + os.path.join(workdir, "study.db")
    raw["checkpoints"] = {**(raw.get("checkpoints") or {}), "dir": os.path.join(workdir, "ck")}
    if budget is not None:
        raw["trials"] = {**raw["trials"], "budget": budget}
    if pruner is not None:
        raw["pruner"] = pruner
    if tree:
        raw["tree"] = {**(raw.get("tree") or {}), **tree}
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


def run_hpsearch(
    study_file: str, *, workload: str, arm: str, seed: int, classic: bool, full: int,
    settings_info: dict[str, Any] | None = None, workers: int = 1,
) -> Run:  # fmt: skip
    """Run one search in this process to its end (its budget spent, or its tree grown) and read
    its trials back. The session is opened (task and data checked) before timing. `workers` > 1:
    as many `hpsearch worker` processes, this one among them, as `hpsearch run --workers` runs
    them (one torch thread each)."""
    import subprocess
    import sys

    import optuna

    from hpsearch.config.budget import generation_sizes, tree_cost
    from hpsearch.search.control import StopFlag
    from hpsearch.search.session import Session
    from hpsearch.search.worker import Worker

    session = Session.open(study_file, classic=classic)
    try:
        s = session.settings
        target = BIG if classic else s.trials.n
        stop = StopFlag()
        started = dt.datetime.now()  # Optuna stamps trials with naive local datetime.now()
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "hpsearch", "worker", study_file,
               *(["--no-fork", "--trials", str(BIG)] if classic else [])]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        others = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
                  for _ in range(workers - 1)]  # fmt: skip
        try:
            with stop.installed():
                Worker(session, stop=stop).run(target)
        finally:
            for p in others:
                p.wait()
        wall = time.monotonic() - t0
        name, url = session.study.study_name, s.storage
    finally:
        session.close()
    study = optuna.load_study(study_name=name, storage=url)
    warm_steps = int(study.user_attrs.get(ATTR + "warmup_steps", 0) or 0)
    warm_samples = int(study.user_attrs.get(ATTR + "warmup_samples", 0) or 0)
    trials = study.get_trials(deepcopy=False)
    points = curve(
        trials, direction=s.objective.direction, started=started,
        extra_steps=0 if classic else warm_steps, extra_samples=0 if classic else warm_samples,
    )  # fmt: skip
    info = dict(settings_info or {})
    info.update(pruner=s.pruner.name, sampler=s.sampler.name, trials=len(points),
                workers=workers)  # fmt: skip
    tree = s.tree if not classic else None
    if tree is not None:
        info.update(roots=tree.roots, rungs=list(tree.rungs), keep=tree.keep,
                    children=tree.children, probe=tree.probe, sized=tree.sized,
                    planned=generation_sizes(tree), planned_cost=round(tree_cost(tree), 3),
                    grown=grown(trials))  # fmt: skip
        info.update(winner_lineage(trials, s.objective.direction))
    if not classic and warm_samples:
        info.update(warmup_samples=warm_samples)
    budget = round(float(s.trials.budget or 0) * full)
    return Run(workload, arm, seed, s.objective.direction, s.objective.metric, full, budget,
               wall, points, info)  # fmt: skip


def grown(trials: Any) -> list[list[int]]:
    """Per generation: [nodes, complete, pruned] as the tree actually grew."""
    out: dict[int, list[int]] = {}
    for t in trials:
        g = t.user_attrs.get(ATTR + "generation")
        if g is None:
            continue
        row = out.setdefault(int(g), [0, 0, 0])
        row[0] += 1
        row[1] += t.state.name == "COMPLETE"
        row[2] += t.state.name == "PRUNED"
    return [out[g] for g in sorted(out)]


def winner_lineage(trials: Any, direction: str) -> dict[str, Any]:
    """The winner (the complete trial with the best value; ties: the lowest number) and its
    lineage: its generation, and whether any node on its path was forked with new values (a
    child other than child 0, which continues with its parent's values)."""

    def value(t: Any) -> float | None:  # the model kept: a probed node's own, at its rung
        rung = t.user_attrs.get(ATTR + "rung_value")
        return rung if rung is not None else t.value

    done = [t for t in trials if t.state.name == "COMPLETE" and value(t) is not None]
    if not done:
        return {}
    sign = -1.0 if direction == "maximize" else 1.0
    win = min(done, key=lambda t: (sign * value(t), t.number))
    by = {t.number: t for t in trials}
    forks, node, path = 0, win, []
    while node is not None:
        path.append(node.number)
        # a root's `child` is its place among the roots, not a fork
        if node_generation(node) and int(node.user_attrs.get(ATTR + "child", 0) or 0) > 0:
            forks += 1
        parent = node.user_attrs.get(ATTR + "parent_trial")
        node = by.get(parent) if parent is not None else None
    return {"winner": win.number, "winner_generation": node_generation(win),
            "winner_forks": forks, "winner_path": path[::-1]}  # fmt: skip


def node_generation(t: Any) -> int | None:
    g = t.user_attrs.get(ATTR + "generation")
    return int(g) if g is not None else None


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
