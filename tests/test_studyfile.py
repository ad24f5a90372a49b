"""The study file: real YAML files in a temp dir, loaded and checked message by message."""

from __future__ import annotations

import copy
import importlib
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hpsearch.config import (
    DROPOUT_KEY,
    FORK_KEYS,
    FORKABLE,
    GROUP_KEYS,
    CheckpointSettings,
    ComponentSettings,
    DataSettings,
    Objective,
    Param,
    ScheduleSettings,
    StudySettings,
    TrialSettings,
    WarmupSettings,
    load_study_file,
    make_pruner,
    make_sampler,
    suggest,
    trial_hparams,
    warmup_hparams,
)
from hpsearch.errors import StudyFileError, UsageError
from hpsearch.task import Task
from hpsearch.training.forkcheck import check_forkable

optuna.logging.set_verbosity(optuna.logging.WARNING)

TASK_SOURCE = "from hpsearch.task import Task\n\nclass Digits(Task):\n    pass\n"


def minimal() -> dict[str, Any]:
    """The smallest valid study (as YAML data)."""
    return {
        "name": "digits-mlp",
        "task": "task.py:Digits",
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "warmup": {"epochs": 6, "hparams": {"lr": 1.0e-3, "batch_size": 64, "hidden": 256}},
        "trials": {"n": 30, "epochs": 2},
        "search_space": {"lr": {"float": [1.0e-5, 1.0e-1], "log": True}},
    }


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    (tmp_path / "task.py").write_text(TASK_SOURCE)
    return tmp_path


def write(directory: Path, data: Any, name: str = "study.yaml") -> str:
    path = directory / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def error_of(path: str) -> StudyFileError:
    with pytest.raises(StudyFileError) as info:
        load_study_file(path)
    return info.value


def modified(**changes: Any) -> dict[str, Any]:
    """minimal() with dotted keys set (value None deletes the key)."""
    data = minimal()
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return data


# -- good files ---------------------------------------------------------------------------------


def test_minimal_file_gets_the_documented_defaults(study_dir: Path) -> None:
    path = write(study_dir, minimal())
    s = load_study_file(path)
    base = str(study_dir)
    run_dir = os.path.join(base, "runs", "digits-mlp")
    assert s == StudySettings(
        path=path,
        base_dir=base,
        run_dir=run_dir,
        name="digits-mlp",
        task=os.path.join(base, "task.py") + ":Digits",
        seed=0,
        device="cpu",
        objective=Objective("val_accuracy", "maximize"),
        storage=f"sqlite:///{run_dir}/study.db",
        checkpoints=CheckpointSettings(
            dir=os.path.join(run_dir, "checkpoints"),
            every=1.0,
            every_steps=None,
            keep_best=3,
            compression="none",
            async_save=True,
        ),
        warmup=WarmupSettings(
            epochs=6.0, steps=None, hparams={"lr": 1e-3, "batch_size": 64, "hidden": 256}
        ),
        trials=TrialSettings(
            n=30,
            epochs=2.0,
            steps=None,
            eval_every=0.5,
            eval_every_steps=None,
            retries=2,
            heartbeat_s=30.0,
            grace_s=120.0,
        ),
        data=DataSettings(num_workers=0),
        search_space={"lr": Param("lr", "float", low=1e-5, high=0.1, log=True)},
        schedule=None,
        sampler=ComponentSettings("TPESampler", {}),
        pruner=ComponentSettings("MedianPruner", {}),
    )
    assert s.storage.startswith("sqlite:////")


FULL = """\
name: digits_mlp.v2
task: ../tasks/digits.py:Digits
seed: 7
device: cuda:1
objective: {metric: val_loss, direction: minimize}
storage: sqlite:///db/study.db
checkpoints:
  dir: ckpt
  every_steps: 50
  keep_best: 2
  compression: zstd
  async: false
warmup:
  steps: 400
  hparams:
    lr: 1e-3            # PyYAML reads this as a string; it is taken as the number meant
    batch_size: 64
    dropout: 0.1
    weight_decay: 0.0
    momentum: 0.9
    betas: [0.9, 0.999]
    hidden: 256
    act: relu
    bias: true
trials:
  n: 12
  steps: 200
  eval_every_steps: 25
  retries: 0
  heartbeat_s: 5
  grace_s: 20.5
data: {num_workers: 2}
search_space:
  lr: {float: [1.0e-5, 1.0e-1], log: true}
  dropout: {float: [0.0, 0.5], step: 0.1}
  batch_size: {categorical: [32, 64, 128]}
  weight_decay: {float: [1.0e-6, 1.0e-2], log: true}
  momentum: {float: [0.8, 0.99]}
  act: {categorical: [relu, gelu, null]}
schedule: {name: cosine, warmup: 0.05, final: 0.1}
sampler: {name: TPESampler, n_startup_trials: 8, multivariate: true}
pruner: {name: MedianPruner, n_warmup_steps: 2}
"""


def test_a_file_with_every_option_round_trips(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "digits.py").write_text(TASK_SOURCE)
    (tmp_path / "studies").mkdir()
    write(tmp_path / "studies", FULL, "digits.yaml")
    monkeypatch.chdir(tmp_path)  # relative paths must follow the study file, not the cwd

    s = load_study_file("studies/digits.yaml")

    base = str(tmp_path / "studies")
    assert s.path == "studies/digits.yaml"
    assert s.base_dir == base
    assert s.run_dir == os.path.join(base, "runs", "digits_mlp.v2")
    assert s.name == "digits_mlp.v2"
    assert s.task == str(tmp_path / "tasks" / "digits.py") + ":Digits"
    assert (s.seed, s.device) == (7, "cuda:1")
    assert s.objective == Objective("val_loss", "minimize")
    assert s.storage == f"sqlite:///{base}/db/study.db"
    assert s.checkpoints == CheckpointSettings(
        dir=os.path.join(base, "ckpt"),
        every=None,
        every_steps=50,
        keep_best=2,
        compression="zstd",
        async_save=False,
    )
    assert s.warmup == WarmupSettings(
        epochs=None,
        steps=400,
        hparams={
            "lr": 0.001,
            "batch_size": 64,
            "dropout": 0.1,
            "weight_decay": 0.0,
            "momentum": 0.9,
            "betas": [0.9, 0.999],
            "hidden": 256,
            "act": "relu",
            "bias": True,
        },
    )
    assert s.trials == TrialSettings(
        n=12,
        epochs=None,
        steps=200,
        eval_every=None,
        eval_every_steps=25,
        retries=0,
        heartbeat_s=5.0,
        grace_s=20.5,
    )
    assert s.data == DataSettings(num_workers=2)
    assert s.search_space == {
        "lr": Param("lr", "float", low=1e-5, high=0.1, log=True),
        "dropout": Param("dropout", "float", low=0.0, high=0.5, step=0.1),
        "batch_size": Param("batch_size", "categorical", choices=(32, 64, 128)),
        "weight_decay": Param("weight_decay", "float", low=1e-6, high=1e-2, log=True),
        "momentum": Param("momentum", "float", low=0.8, high=0.99),
        "act": Param("act", "categorical", choices=("relu", "gelu", None)),
    }
    assert list(s.search_space) == [
        "lr",
        "dropout",
        "batch_size",
        "weight_decay",
        "momentum",
        "act",
    ]
    assert s.schedule == ScheduleSettings("cosine", 0.05, 0.1)
    assert s.sampler == ComponentSettings(
        "TPESampler", {"n_startup_trials": 8, "multivariate": True}
    )
    assert s.pruner == ComponentSettings("MedianPruner", {"n_warmup_steps": 2})
    # Frozen, and picklable so that worker processes can receive it.
    with pytest.raises(AttributeError):
        s.name = "other"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(s)) == s


def test_trial_steps_default_to_four_evaluations(study_dir: Path) -> None:
    s = load_study_file(write(study_dir, modified(trials={"n": 3, "steps": 10})))
    assert (s.trials.eval_every, s.trials.eval_every_steps) == (None, 2)
    s = load_study_file(write(study_dir, modified(trials={"n": 3, "steps": 2})))
    assert s.trials.eval_every_steps == 1


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("sqlite:///runs/x.db", "sqlite:///{base}/runs/x.db"),
        ("sqlite:///../shared/x.db?timeout=30", "sqlite:///{parent}/shared/x.db?timeout=30"),
        # Absolute paths are kept; they lie in the temp dir because the directory is checked.
        ("sqlite:///{base}/abs/x.db", "sqlite:///{base}/abs/x.db"),
        ("postgresql://user@db-host:5432/hp", "postgresql://user@db-host:5432/hp"),
        ("results/study.sqlite3", "sqlite:///{base}/results/study.sqlite3"),
        ("{base}/abs/study.db", "sqlite:///{base}/abs/study.db"),
    ],
)
def test_storage_is_resolved_against_the_study_file(
    study_dir: Path, storage: str, expected: str
) -> None:
    storage = storage.format(base=study_dir)
    s = load_study_file(write(study_dir, modified(storage=storage)))
    assert s.storage == expected.format(base=study_dir, parent=study_dir.parent)


@pytest.mark.parametrize(
    ("directory", "expected"),
    [
        ("memory://ckpt", "memory://ckpt"),
        ("file://{base}/ckpt", "file://{base}/ckpt"),
        ("ckpt/here", "{base}/ckpt/here"),
        ("{base}/abs/ckpt", "{base}/abs/ckpt"),  # in the temp dir: the directory is checked
    ],
)
def test_checkpoint_dir_is_a_local_path_or_a_url(
    study_dir: Path, directory: str, expected: str
) -> None:
    directory = directory.format(base=study_dir)
    s = load_study_file(write(study_dir, modified(checkpoints={"dir": directory})))
    assert s.checkpoints.dir == expected.format(base=study_dir)


def test_a_module_task_is_kept_as_written(study_dir: Path) -> None:
    s = load_study_file(write(study_dir, modified(task="mypkg.tasks:Digits")))
    assert s.task == "mypkg.tasks:Digits"


# -- bad files: each message names the file, the key path, the rule and the fix -----------------


def test_invalid_yaml_names_line_and_column(study_dir: Path) -> None:
    path = write(study_dir, "name: a\ntask: [x\n")
    assert str(error_of(path)) == (
        f"{path}: invalid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>' "
        f"(while parsing a flow sequence); fix the syntax there"
    )
    path = write(study_dir, "name: a\n  task: b\n")
    assert str(error_of(path)) == (
        f"{path}: invalid YAML at line 2, column 7: mapping values are not allowed here; "
        f"fix the syntax there"
    )


def test_missing_and_empty_files(study_dir: Path) -> None:
    missing = str(study_dir / "nope.yaml")
    assert (
        str(error_of(missing))
        == f"{missing}: file not found (looked for {missing}); check the path"
    )
    empty = write(study_dir, "")
    assert str(error_of(empty)) == (
        f"{empty}: the file is empty; a study needs name, task, objective, trials and search_space"
    )
    assert isinstance(error_of(empty), UsageError)  # exit status 2 in the CLI


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        (
            {"warmup__epoch": 3, "warmup__epochs": None},
            "warmup.epoch",
            "unknown key; did you mean 'epochs'? (allowed here: epochs, steps, hparams)",
        ),
        (
            {"objective__metrc": "x"},
            "objective.metrc",
            "unknown key; did you mean 'metric'? (allowed here: metric, direction)",
        ),
        (
            {"search_space__lr__lgo": True},
            "search_space.lr.lgo",
            "unknown key; did you mean 'log'? (allowed here: float, int, categorical, log, step)",
        ),
        (
            {"objective__metric": None},
            "objective.metric",
            "required key is missing; add it, e.g. `metric: val_accuracy`",
        ),
        (
            {"trials": None},
            "trials",
            "required key is missing; add it, e.g. `trials: {n: 20, epochs: 2}`",
        ),
        (
            {"warmup__hparams__lr": None},
            "warmup.hparams.lr",
            "required: the warm-up's lr; add it, e.g. `lr: 1.0e-3`",
        ),
        (
            {"objective__direction": "maximise"},
            "objective.direction",
            "must be one of minimize, maximize, got 'maximise'; did you mean 'maximize'?",
        ),
        (
            {"search_space__lr": {"float": [0.1, 0.01]}},
            "search_space.lr",
            "low must be < high, got low=0.1 high=0.01; write the range as [low, high] "
            "(a fixed value belongs in warmup.hparams only)",
        ),
        (
            {
                "warmup__hparams__weight_decay": 0.0,
                "search_space__weight_decay": {"float": [0.0, 0.01], "log": True},
            },
            "search_space.weight_decay",
            "log: true requires low > 0, got low=0; raise low or set log: false",
        ),
        (
            {"search_space__lr": {"float": [1e-5, 1e-1], "log": True, "step": 0.01}},
            "search_space.lr",
            "log and step are exclusive: a log range cannot have a step; remove one",
        ),
        (
            {"search_space__momentum": {"float": [0.5, 0.99]}},
            "search_space.momentum",
            "'momentum' is not in warmup.hparams; add it to warmup.hparams with the value the "
            "warm-up should use",
        ),
        (
            {"warmup__steps": 100},
            "warmup",
            "give either epochs or steps, not both (got epochs=6, steps=100)",
        ),
        (
            {"trials__epochs": None},
            "trials",
            "required: give epochs: <number> or steps: <integer>",
        ),
        (
            {"sampler": {"name": "TPESampler", "seed": 3}},
            "sampler.seed",
            "remove it: the sampler's seed comes from the top-level seed (got seed=3); "
            "set `seed:` instead",
        ),
        (
            {"sampler": {"name": "GridSampler"}},
            "sampler",
            "GridSampler needs every search_space entry to be categorical or int, but "
            "search_space.lr is a float range [1e-05, 0.1]; write it as {categorical: [...]} or "
            "choose another sampler",
        ),
        (
            {"sampler": {"name": "GridSampler", "search_space": {"lr": [0.1]}}},
            "sampler.search_space",
            "remove it: GridSampler's grid is derived from the study's search_space",
        ),
        (
            {"name": "../evil"},
            "name",
            "must be 1-100 letters, digits, '_', '.' or '-' starting with a letter or digit "
            "(it becomes a directory name), got '../evil'; use e.g. 'evil'",
        ),
        (
            {"name": "a/b"},
            "name",
            "must be 1-100 letters, digits, '_', '.' or '-' starting with a letter or digit "
            "(it becomes a directory name), got 'a/b'; use e.g. 'a-b'",
        ),
        (
            {"task": "task.py"},
            "task",
            "must name a module or .py file and a class, got 'task.py'; write it as "
            "'package.module:Class' or 'path/to/file.py:Class'",
        ),
        ({"device": "gpu"}, "device", "must be cpu, cuda or cuda:N (N a GPU index), got 'gpu'"),
        ({"seed": -1}, "seed", "must be an integer >= 0 and < 4294967296, got -1"),
        ({"seed": True}, "seed", "must be an integer >= 0 and < 4294967296, got true"),
        (
            {"warmup__epochs": 0},
            "warmup.epochs",
            "must be > 0 and <= 1000000, got 0; give the epochs the warm-up trains, "
            "e.g. warmup.epochs: 2",
        ),
        ({"trials__n": 0}, "trials.n", "must be an integer >= 1, got 0"),
        (
            {"trials__eval_every": 3},
            "trials.eval_every",
            "must be <= trials.epochs, or the pruner never hears from a trial, got eval_every=3 "
            "epochs=2",
        ),
        (
            {"checkpoints": {"every": 1, "every_steps": 10}},
            "checkpoints",
            "give either every or every_steps, not both (got every=1, every_steps=10)",
        ),
        (
            {"checkpoints": {"compression": "gzip"}},
            "checkpoints.compression",
            "must be one of none, zstd, got 'gzip'",
        ),
        (
            {"checkpoints": {"async": "yes please"}},
            "checkpoints.async",
            "must be true or false, got 'yes please'",
        ),
        (
            {"warmup__hparams__dropout": 1.0},
            "warmup.hparams.dropout",
            "must be >= 0 and < 1, got 1.0",
        ),
        (
            {"warmup__hparams__dropout": 0.1, "search_space__dropout": {"float": [0.0, 1.0]}},
            "search_space.dropout",
            "dropout must be >= 0 and < 1, got high=1",
        ),
        (
            {"search_space__lr": {"categorical": [0.1, 0.0]}},
            "search_space.lr",
            "lr must be > 0, got choice=0",
        ),
        (
            {"search_space__batch_size": {"float": [16, 128]}},
            "search_space.batch_size",
            "batch_size must be an int range or a categorical of integers; write "
            "{int: [low, high]} or {categorical: [32, 64, ...]}",
        ),
        (
            {"search_space__batch_size": {"int": [0, 128]}},
            "search_space.batch_size",
            "batch_size must be >= 1, got low=0",
        ),
        (
            {"search_space__hidden": {"int": [16.5, 128]}},
            "search_space.hidden",
            "int range bounds must be integers, got [16.5, 128]; use float: for a real-valued "
            "range",
        ),
        (
            {"search_space__hidden": {"categorical": [64, 64.0]}},
            "search_space.hidden",
            "choices must be distinct, got 64.0 twice in [64, 64.0]",
        ),
        (
            {"search_space__hidden": {"categorical": [64], "log": True}},
            "search_space.hidden.log",
            "log applies to float and int ranges, not to categorical; remove it",
        ),
        (
            {"search_space__hidden": {"float": [1, 2], "int": [1, 2]}},
            "search_space.hidden",
            "needs exactly one of float, int, categorical (got float, int); write "
            "{float: [low, high]}, {int: [low, high]} or {categorical: [a, b, ...]}",
        ),
        (
            {"search_space__hidden": [64, 128]},
            "search_space.hidden",
            "must be one of {float: [low, high]}, {int: [low, high]} or "
            "{categorical: [a, b, ...]}, got [64, 128]",
        ),
        (
            {"search_space": {}},
            "search_space",
            "must be a non-empty mapping of hyperparameter to range, e.g. "
            "{lr: {float: [1.0e-5, 1.0e-1], log: true}}, got {}",
        ),
        (
            {"storage": "runs/study"},
            "storage",
            "must be a database URL (sqlite:///path/to/study.db, postgresql://user@host/db, ...), "
            "a journal (journal:///path/to/study.journal) or a path ending in .db, .sqlite, "
            ".sqlite3 or .journal, got 'runs/study'",
        ),
        (
            {"schedule": {"name": "cosine", "warmup": 1.0}},
            "schedule.warmup",
            "must be >= 0 and < 1, got 1.0",
        ),
        (
            {"pruner": {"name": "MedianPruner", "n_warmup_step": 2}},
            "pruner.n_warmup_step",
            "MedianPruner has no argument 'n_warmup_step'; did you mean 'n_warmup_steps'? "
            "(its arguments: n_startup_trials, n_warmup_steps, interval_steps, n_min_trials)",
        ),
    ],
)
def test_each_mistake_is_named_with_its_key_and_fix(
    study_dir: Path, changes: dict[str, Any], key: str, message: str
) -> None:
    path = write(study_dir, modified(**changes))
    err = error_of(path)
    assert (err.path, err.key, err.detail) == (path, key, message)
    assert str(err) == f"{path}: {key}: {message}"


def test_an_unknown_top_level_key_suggests_the_close_one(study_dir: Path) -> None:
    data = minimal()
    data["serch_space"] = data.pop("search_space")
    path = write(study_dir, data)
    assert str(error_of(path)) == (
        f"{path}: serch_space: unknown key; did you mean 'search_space'? (allowed here: name, "
        f"task, seed, device, objective, storage, checkpoints, tree, warmup, trials, data, "
        f"search_space, schedule, sampler, pruner, training, loggers, gpus)"
    )


def test_a_missing_task_file_is_named_with_its_resolved_path(study_dir: Path) -> None:
    path = write(study_dir, modified(task="tasks/missing.py:Digits"))
    assert str(error_of(path)) == (
        f"{path}: task: file not found: {study_dir}/tasks/missing.py (a relative path is "
        f"resolved against the study file's directory, {study_dir}); fix the path"
    )


def test_an_unknown_sampler_name_suggests_the_close_one(study_dir: Path) -> None:
    path = write(study_dir, modified(sampler={"name": "TPESamplr"}))
    err = error_of(path)
    assert err.key == "sampler.name"
    assert err.detail.startswith(
        "'TPESamplr' is not a class in optuna.samplers; did you mean 'TPESampler'? (available: "
    )
    available = err.detail.split("(available: ")[1].rstrip(")").split(", ")
    assert {"TPESampler", "RandomSampler", "GridSampler", "CmaEsSampler"} <= set(available)
    assert "BaseSampler" not in available

    path = write(study_dir, modified(pruner={"name": "MedianPrunner"}))
    err = error_of(path)
    assert err.key == "pruner.name"
    assert "did you mean 'MedianPruner'?" in err.detail


def test_bad_sampler_arguments_are_named(study_dir: Path) -> None:
    path = write(study_dir, modified(sampler={"name": "TPESampler", "n_startup": 5}))
    err = error_of(path)
    assert err.key == "sampler.n_startup"
    assert err.detail.startswith(
        "TPESampler has no argument 'n_startup'; did you mean 'n_startup_trials'? (its arguments: "
    )
    # A value the class rejects fails at load, not after the warm-up.
    path = write(study_dir, modified(pruner={"name": "MedianPruner", "n_startup_trials": -1}))
    err = error_of(path)
    assert err.key == "pruner"
    assert err.detail.startswith("MedianPruner(n_startup_trials=-1) cannot be built: ValueError: ")
    assert err.detail.endswith("; fix the argument")
    # A required argument that a study file cannot give.
    path = write(study_dir, modified(pruner={"name": "PatientPruner", "patience": 2}))
    err = error_of(path)
    assert err.key == "pruner"
    assert err.detail.startswith(
        "PatientPruner: missing a required argument: 'wrapped_pruner'; give its arguments"
    )


# -- forkability --------------------------------------------------------------------------------


class PlainTask(Task):
    """The check builds the model and optimizer (on the meta device) for every key a fork
    changes: the smallest task it can build."""

    def model(self, hparams: dict[str, Any]) -> Any:
        import torch

        return torch.nn.Linear(2, 2)

    def optimizer(self, model: Any, hparams: dict[str, Any]) -> Any:
        import torch

        return torch.optim.SGD(model.parameters(), lr=float(hparams["lr"]))


class CustomTask(PlainTask):
    def apply_hparams(self, model: Any, optimizer: Any, hparams: dict[str, Any]) -> None:
        pass


def test_a_non_forkable_key_needs_apply_hparams(study_dir: Path) -> None:
    data = modified(search_space__hidden={"int": [64, 512], "step": 64})
    path = write(study_dir, data)
    s = load_study_file(path)
    with pytest.raises(StudyFileError) as info:
        check_forkable(s, PlainTask)
    assert str(info.value) == (
        f"{path}: search_space.hidden: 'hidden' cannot be forked: it changes the model's "
        f"shape/data, which the warm-up fixes. Remove it from search_space, or implement "
        f"Task.apply_hparams in PlainTask to apply it to a restored model."
    )
    check_forkable(s, CustomTask)  # the task says it can apply it
    check_forkable(load_study_file(write(study_dir, minimal())), PlainTask)
    assert set(FORKABLE) == {
        "lr",
        "weight_decay",
        "momentum",
        "betas",
        "eps",
        "dropout",
        "batch_size",
    }


def test_the_fork_applies_the_one_registry_of_forkable_keys() -> None:
    import hpsearch.training

    fork_module = importlib.import_module("hpsearch.training.fork")
    assert hpsearch.training.FORKABLE is FORKABLE
    assert fork_module.FORKABLE is FORKABLE
    assert FORKABLE == ("lr", "weight_decay", "momentum", "betas", "eps", "dropout", "batch_size")
    assert GROUP_KEYS == ("weight_decay", "momentum", "betas", "eps")
    assert DROPOUT_KEY == "dropout"
    assert {k: FORK_KEYS[k] for k in ("lr", "dropout", "batch_size")} == {
        "lr": "lr",
        "dropout": "dropout",
        "batch_size": "batch_size",
    }


def test_reading_a_study_file_imports_no_torch(study_dir: Path) -> None:
    # `hpsearch status` and friends read study files; torch costs them seconds.
    code = (
        "import sys\n"
        "from hpsearch.config import load_study_file\n"
        f"load_study_file({write(study_dir, minimal())!r})\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


# -- building the Optuna parts ------------------------------------------------------------------


def test_make_sampler_and_pruner_build_the_named_classes(study_dir: Path) -> None:
    s = load_study_file(write(study_dir, minimal()))
    assert type(make_sampler(s, 0)) is optuna.samplers.TPESampler
    assert type(make_pruner(s)) is optuna.pruners.MedianPruner

    s = load_study_file(write(study_dir, {**minimal(), "pruner": None}))
    assert s.pruner == ComponentSettings("NopPruner", {})
    assert type(make_pruner(s)) is optuna.pruners.NopPruner

    s = load_study_file(
        write(
            study_dir,
            modified(
                sampler="RandomSampler",
                pruner={"name": "PercentilePruner", "percentile": 25.0, "n_warmup_steps": 1},
            ),
        )
    )
    assert type(make_sampler(s, 0)) is optuna.samplers.RandomSampler
    pruner = make_pruner(s)
    assert type(pruner) is optuna.pruners.PercentilePruner
    assert pruner._percentile == 25.0  # the kwargs reached the class
    # The seed reaches the sampler: the same seed samples the same values.
    first = [_sample(s, make_sampler(s, 3)) for _ in range(2)]
    assert first[0] == first[1]
    assert _sample(s, make_sampler(s, 4)) != first[0]


def _sample(s: StudySettings, sampler: optuna.samplers.BaseSampler) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=sampler)
    out = []
    for _ in range(3):
        trial = study.ask()
        out.append(suggest(trial, s))
        study.tell(trial, 0.0)
    return out


def test_grid_sampler_gets_its_grid_from_the_search_space(study_dir: Path) -> None:
    data = modified(
        search_space={
            "lr": {"categorical": [0.1, 0.01]},
            "hidden": {"int": [64, 192], "step": 64},
        },
        sampler={"name": "GridSampler"},
    )
    s = load_study_file(write(study_dir, data))
    sampler = make_sampler(s, 0)
    assert type(sampler) is optuna.samplers.GridSampler
    study = optuna.create_study(sampler=sampler)
    seen = []

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, s)
        seen.append((params["lr"], params["hidden"]))
        return 0.0

    study.optimize(objective, n_trials=20)  # GridSampler stops the study when the grid is done
    assert sorted(seen) == sorted((lr, h) for lr in (0.1, 0.01) for h in (64, 128, 192))


def test_suggest_draws_every_entry_on_a_real_study(study_dir: Path) -> None:
    data = modified(
        warmup__hparams={
            "lr": 1e-3,
            "batch_size": 64,
            "dropout": 0.1,
            "hidden": 128,
            "act": "relu",
        },
        search_space={
            "lr": {"float": [1e-5, 1e-1], "log": True},
            "dropout": {"float": [0.0, 0.5], "step": 0.1},
            "batch_size": {"int": [16, 256], "log": True},
            "hidden": {"int": [64, 256], "step": 64},
            "act": {"categorical": ["relu", "gelu"]},
        },
    )
    s = load_study_file(write(study_dir, data))
    study = optuna.create_study(sampler=make_sampler(s, 0))
    for _ in range(5):
        trial = study.ask()
        params = suggest(trial, s)
        assert params == trial.params
        assert list(params) == ["lr", "dropout", "batch_size", "hidden", "act"]
        assert 1e-5 <= params["lr"] <= 1e-1
        assert round(params["dropout"], 9) in {0.0, 0.1, 0.2, 0.3, 0.4, 0.5}
        assert isinstance(params["batch_size"], int) and 16 <= params["batch_size"] <= 256
        assert params["hidden"] in {64, 128, 192, 256}
        assert params["act"] in {"relu", "gelu"}
        study.tell(trial, params["lr"])
        hp = trial_hparams(s, params)
        assert hp == {**s.warmup.hparams, **params}
    dists = study.trials[0].distributions
    assert dists["lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)
    assert dists["hidden"] == optuna.distributions.IntDistribution(64, 256, step=64)


def test_hparam_helpers_return_copies(study_dir: Path) -> None:
    data = modified(warmup__hparams__betas=[0.9, 0.99])
    s = load_study_file(write(study_dir, data))
    hp = warmup_hparams(s)
    assert hp == {"lr": 1e-3, "batch_size": 64, "hidden": 256, "betas": [0.9, 0.99]}
    hp["betas"].append(1.0)
    hp["lr"] = 5.0
    assert s.warmup.hparams["betas"] == [0.9, 0.99]
    assert trial_hparams(s, {"lr": 0.5}) == {
        "lr": 0.5,
        "batch_size": 64,
        "hidden": 256,
        "betas": [0.9, 0.99],
    }


def test_empty_optional_sections_mean_defaults(study_dir: Path) -> None:
    text = yaml.safe_dump(minimal(), sort_keys=False)
    text += "checkpoints:\ndata:\nschedule:\nsampler:\n"
    s = load_study_file(write(study_dir, text))
    d = load_study_file(write(study_dir, minimal(), "defaults.yaml"))
    assert (s.checkpoints, s.data, s.schedule, s.sampler) == (
        d.checkpoints,
        d.data,
        None,
        ComponentSettings("TPESampler", {}),
    )
    s = load_study_file(write(study_dir, modified(checkpoints={"every": 0.5})))
    assert (s.checkpoints.every, s.checkpoints.every_steps) == (0.5, None)
