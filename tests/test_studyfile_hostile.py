"""Hostile and unlucky study files (issue 10): each is refused with exit status 2 and one message
naming the file, the key and the fix -- before any database, checkpoint or warm-up exists."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpsearch.cli import main
from hpsearch.config import load_study_file
from hpsearch.errors import StudyFileError
from studyutil import ROOT, write_study

HPARAMS = {"lr": 1e-2, "dropout": 0.1, "batch_size": 64, "weight_decay": 1e-4, "hidden": 64}


def refused(path: str, capsys: Any) -> str:
    """Run the study; it must stop with exit status 2 and a one-line message (no traceback)."""
    assert main(["run", path, "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hpsearch: error: {path}: ")
    assert "Traceback" not in err and err.count("\n") == 1
    return err


def nothing_written(directory: Path) -> None:
    """No database, checkpoint or probe file: only the study file (and task) are there."""
    left = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
    assert all(p.endswith((".yaml", ".py")) for p in left), left


# -- YAML anchors and aliases ---------------------------------------------------------------------


def bomb(indent: str) -> str:
    """Nine levels of ten aliases each as a YAML list: 10**9 values once expanded, in 1 kB."""
    lines = [f"{indent}- &l0 [{', '.join(['lol'] * 10)}]"]
    lines += [f"{indent}- &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


ALIAS_FILES = {
    # A message shows the value (name must be a string); the sampler's check printed it too.
    "bomb-in-name": ("name", "name:\n" + bomb("  "), "line 2, column 5"),
    "bomb-in-sampler": (
        "sampler",
        "sampler:\n  name: TPESampler\n  n_startup_trials:\n" + bomb("    "),
        "line 4, column 7",
    ),
    "self-reference": ("name", "name: &self [*self]\n", "line 1, column 7"),
}


@pytest.fixture(scope="module")
def alias_runs(tmp_path_factory: Any) -> dict[str, tuple[str, int, str, Path]]:
    """Each alias file through `hpsearch run`, all in one child process (one import of torch)."""
    files = {}
    for label, (key, text, _) in ALIAS_FILES.items():
        directory = tmp_path_factory.mktemp(label)
        study = write_study(directory)
        doc = yaml.safe_load(Path(study).read_text())
        del doc[key]
        Path(study).write_text(text + yaml.safe_dump(doc, sort_keys=False))
        files[label] = (study, directory)
    script = (
        "import contextlib, io, json, sys\n"
        "from hpsearch.cli import main\n"
        "out = {}\n"
        "for study in sys.argv[1:]:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        out[study] = [main(['run', study]), err.getvalue()]\n"
        "print(json.dumps(out))\n"
    )
    # Before: 202 s and 900 MB for one bomb, a RecursionError for the self-reference. The
    # timeout is a generous bound on "it does not hang", not a timing.
    proc = subprocess.run(
        [sys.executable, "-c", script, *(study for study, _ in files.values())],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        label: (study, *results[study], directory) for label, (study, directory) in files.items()
    }


@pytest.mark.parametrize("label", list(ALIAS_FILES))
def test_anchors_and_aliases_are_refused_without_expanding(
    alias_runs: dict[str, tuple[str, int, str, Path]], label: str
) -> None:
    study, status, err, directory = alias_runs[label]
    where = ALIAS_FILES[label][2]
    assert status == 2, err[-2000:]
    assert err == (
        f"hpsearch: error: {study}: {where}: YAML anchors and aliases (&x / *x) are not allowed "
        f"in a study file: write the value out\n"
    )
    nothing_written(directory)


def test_a_merge_key_is_an_alias_too(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("base: &b {lr: 0.1}\nwarmup:\n  hparams:\n    <<: *b\n")
    with pytest.raises(StudyFileError) as info:
        load_study_file(path)
    assert info.value.key == ""
    assert info.value.detail.startswith("line 1, column 7: YAML anchors and aliases")


def test_deep_nesting_and_unreadable_values_name_the_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: x\ntask: " + "[" * 3000 + "]" * 3000 + "\n")  # was a RecursionError
    with pytest.raises(StudyFileError) as info:
        load_study_file(deep)
    assert (
        info.value.detail
        == "line 2, column 56: nested more than 50 levels deep; a study file needs a few"
    )
    big = tmp_path / "big.yaml"
    big.write_text("name: x\nseed: " + "9" * 5000 + "\n")  # was a bare ValueError
    with pytest.raises(StudyFileError) as info:
        load_study_file(big)
    assert info.value.detail.startswith(
        "line 2, column 7: cannot read this value: Exceeds the limit"
    )


def test_a_huge_value_in_a_message_is_cut(tmp_path: Path, capsys: Any) -> None:
    huge = ["x" * 1000] * 100  # 100 kB of list
    err = refused(write_study(tmp_path, name="big", seed=huge), capsys)
    assert err.startswith(f"hpsearch: error: {tmp_path}/big.yaml: seed: must be an integer >= 0")
    shown = err.split("got ", 1)[1]
    assert shown.startswith("[" + repr("x" * 190)[:-1])
    assert shown.rstrip().endswith("...") and len(err) < 600
    # The same bound for a huge key and a huge class argument.
    err = refused(write_study(tmp_path, name="key", trials={"n": 2, "y" * 10**5: 1}), capsys)
    assert "trials." + "y" * 200 + "...: unknown key" in err and len(err) < 1000
    big_kw = {"name": "TPESampler", "n_startup_trials": ["z" * 10**5]}
    err = refused(write_study(tmp_path, name="arg", sampler=big_kw), capsys)
    assert "sampler.n_startup_trials: TPESampler's n_startup_trials takes int, got ['zzz" in err
    assert len(err) < 800


# -- budgets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "budget", "key", "rule"),
    [
        ("warmup", {"epochs": 1e308}, "warmup.epochs", "must be > 0 and <= 1000000, got 1e+308"),
        ("warmup", {"epochs": float("inf")}, "warmup.epochs", "must be a number > 0 and <= "),
        ("warmup", {"epochs": float("nan")}, "warmup.epochs", "must be a number > 0 and <= "),
        (
            "warmup",
            {"steps": 10**30},
            "warmup.steps",
            "must be an integer > 0 and <= 1000000000000",
        ),
        ("trials", {"n": 2, "epochs": 1e300}, "trials.epochs", "must be > 0 and <= 1000000"),
        (
            "checkpoints",
            {"every_steps": 10**20},
            "checkpoints.every_steps",
            "must be an integer > 0 and <= 1000000000000",
        ),
    ],
)
def test_a_budget_must_be_finite_positive_and_of_reasonable_size(
    tmp_path: Path, capsys: Any, section: str, budget: dict[str, Any], key: str, rule: str
) -> None:
    # Before: 1e308 epochs passed the file check and overflowed converting epochs to samples.
    doc: dict[str, Any] = dict(budget)
    if section == "warmup":
        doc["hparams"] = HPARAMS
    path = write_study(tmp_path, **{section: doc})
    err = refused(path, capsys)
    assert f": {key}: {rule}" in err
    assert "; give the " in err  # the fix
    nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"trials": {"n": 2, "epochs": 1, "eval_every": 0.0001}}, "trials.eval_every"),
        ({"checkpoints": {"every": 0.0002}}, "checkpoints.every"),
        ({"warmup": {"epochs": 0.0003, "hparams": HPARAMS}}, "warmup.epochs"),
    ],
)
def test_a_budget_of_zero_samples_is_refused_with_the_minimum(
    tmp_path: Path, capsys: Any, changes: dict[str, Any], key: str
) -> None:
    # Before: eval_every was silently raised to 1 sample (an evaluation every step) and a 0-sample
    # warm-up trained nothing. The digits task has 1438 training samples.
    err = refused(write_study(tmp_path, **changes), capsys)
    assert f": {key}: " in err
    assert "epochs of the task's 1438 training samples is 0 samples; the minimum is 0.000695" in err
    assert not list(tmp_path.rglob("manifest.json"))  # refused before the warm-up


# -- storage --------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/proc/hpsearch-test/study.db", "{study}/x.db"])
def test_a_storage_that_cannot_hold_a_database(tmp_path: Path, capsys: Any, where: str) -> None:
    # Before: a FileNotFoundError / NotADirectoryError traceback while opening the storage.
    study = os.path.join(tmp_path, "tiny.yaml")
    path = write_study(tmp_path, storage=where.format(study=study))
    err = refused(path, capsys)
    assert ": storage: cannot create the database " in err
    assert err.rstrip().endswith(
        "; point storage at a directory you can write, e.g. storage: runs/study.db"
    )
    if where.startswith("{study}"):
        assert f"'{study}' is a file, so nothing can be created in it" in err


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite+pysqlite:///:memory:"])
def test_an_in_memory_database_is_refused(tmp_path: Path, capsys: Any, url: str) -> None:
    # Before: StorageInternalError -- the checkpoint tree opened its own, empty database.
    err = refused(write_study(tmp_path, storage=url), capsys)
    assert f": storage: {url!r} is an in-memory database: each connection" in err
    assert "give a file path, e.g. sqlite:///runs/study.db" in err


def test_a_study_file_error_leaves_no_database_behind(tmp_path: Path, capsys: Any) -> None:
    # Before: the database (and runs/<name>/) was created, then the run died on the budget.
    refused(write_study(tmp_path, warmup={"epochs": 1e308, "hparams": HPARAMS}), capsys)
    assert not (tmp_path / "runs").exists()
    nothing_written(tmp_path)


def test_a_task_check_error_leaves_no_database_behind(tmp_path: Path, capsys: Any) -> None:
    changes = {"trials": {"n": 2, "epochs": 1, "eval_every": 0.0001}}
    refused(write_study(tmp_path, **changes), capsys)
    assert not (tmp_path / "runs" / "tiny" / "study.db").exists()


# -- checkpoints.dir ------------------------------------------------------------------------------


def test_an_unknown_fsspec_protocol(tmp_path: Path, capsys: Any) -> None:
    # Before: "ValueError: Protocol not known" as a traceback.
    err = refused(write_study(tmp_path, checkpoints={"dir": "gcss://bucket/x"}), capsys)
    assert (
        ": checkpoints.dir: 'gcss://bucket/x': fsspec knows no protocol 'gcss'; "
        "did you mean 'gcs'?; use a local directory" in err
    )
    assert "use a local directory or a URL such as s3://bucket/prefix" in err
    nothing_written(tmp_path)


def test_a_known_protocol_without_its_package_names_the_package(
    tmp_path: Path, capsys: Any
) -> None:
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed")
    # Before: "ImportError: Install s3fs to access S3" as a traceback.
    err = refused(write_study(tmp_path, checkpoints={"dir": "s3://bucket/x"}), capsys)
    assert ": checkpoints.dir: 's3://bucket/x': the s3:// protocol needs the package s3fs" in err
    assert "install it (pip install s3fs)" in err


def test_a_file_as_checkpoints_dir(tmp_path: Path, capsys: Any) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("precious\n")
    # Before: NotADirectoryError as a traceback.
    err = refused(write_study(tmp_path, checkpoints={"dir": str(file)}), capsys)
    assert f": checkpoints.dir: '{file}' is a file, not a directory; name a directory" in err
    err = refused(write_study(tmp_path, checkpoints={"dir": f"{file}/ckpt"}), capsys)
    assert f"'{file}' is a file, so nothing can be created in it" in err
    assert file.read_text() == "precious\n"


def test_an_unwritable_checkpoints_dir_is_found_before_the_warm_up(
    tmp_path: Path, capsys: Any
) -> None:
    # /proc takes no new files, even for root. Before: a FileNotFoundError traceback.
    err = refused(write_study(tmp_path, checkpoints={"dir": "/proc/hpsearch-ckpt"}), capsys)
    assert ": checkpoints.dir: cannot write checkpoints under '/proc/hpsearch-ckpt': " in err
    assert "'/proc' does not take new files" in err
    assert err.rstrip().endswith("; name a directory you can write (it is created if missing)")
    nothing_written(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_checkpoints_dir_is_found_before_the_warm_up(
    tmp_path: Path, capsys: Any
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        err = refused(write_study(tmp_path, checkpoints={"dir": f"{ro}/ckpt"}), capsys)
    finally:
        ro.chmod(stat.S_IRWXU)
    assert f"cannot write checkpoints under '{ro}/ckpt': '{ro}' does not take new files" in err


# -- what the task's model and optimizer must hold ------------------------------------------------


def test_momentum_searched_with_adamw_is_refused_before_the_warm_up(
    tmp_path: Path, capsys: Any
) -> None:
    path = write_study(
        tmp_path,
        warmup={"epochs": 2, "hparams": {**HPARAMS, "momentum": 0.9}},
        search_space={"momentum": {"float": [0.8, 0.99]}},
    )
    # Before: the warm-up ran, then the first fork failed without the file or the key.
    err = refused(path, capsys)
    assert (
        ": search_space.momentum: the task's optimizer AdamW has no 'momentum' (its param " in err
    )
    assert "remove momentum from search_space, or have DigitsMLP.optimizer return one" in err
    assert "torch.optim.SGD" in err
    assert not list(tmp_path.rglob("manifest.json"))


NO_DROPOUT = """\
import torch
from hostile_digits import DigitsMLP


class NoDropout(DigitsMLP):
    def model(self, hparams):
        return torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
"""


def test_dropout_searched_in_a_model_without_dropout_is_refused_before_the_warm_up(
    tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "nodrop.py").write_text(NO_DROPOUT)
    (tmp_path / "hostile_digits.py").write_text(Path(ROOT, "examples", "digits.py").read_text())
    path = write_study(
        tmp_path,
        task=f"{tmp_path}/nodrop.py:NoDropout",
        search_space={"dropout": {"float": [0.0, 0.5]}},
    )
    # Before: the warm-up ran, then the first fork failed without the file or the key.
    err = refused(path, capsys)
    assert (
        ": search_space.dropout: the model that NoDropout.model builds (Sequential) has no "
        "torch.nn.Dropout module, so a fork has no dropout to change; add "
        "torch.nn.Dropout(hparams['dropout']) to the model, or remove dropout from search_space"
    ) in err
    assert not list(tmp_path.rglob("manifest.json"))


# -- sampler and pruner arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "key", "message"),
    [
        (
            {"sampler": {"name": "TPESampler", "n_startup_trials": "ten"}},
            "sampler.n_startup_trials",
            "TPESampler's n_startup_trials takes int, got 'ten'; give a value of that type, "
            "e.g. its default n_startup_trials: 10",
        ),
        (
            {"sampler": {"name": "TPESampler", "gamma": 0.1}},
            "sampler.gamma",
            "TPESampler's gamma takes a Python object (Callable[[int], int] | None), which a "
            "study file cannot give, got 0.1; remove gamma",
        ),
        (
            {"pruner": {"name": "MedianPruner", "n_warmup_steps": "1"}},
            "pruner.n_warmup_steps",
            "MedianPruner's n_warmup_steps takes int, got '1'; give a value of that type, "
            "e.g. its default n_warmup_steps: 0",
        ),
    ],
)
def test_a_sampler_or_pruner_argument_of_the_wrong_type(
    tmp_path: Path, capsys: Any, component: dict[str, Any], key: str, message: str
) -> None:
    # Before: the constructor kept the value and the first trial after the warm-up raised
    # "TypeError: '<' not supported between instances of 'int' and 'str'" as a traceback.
    err = refused(write_study(tmp_path, **component), capsys)
    assert err == f"hpsearch: error: {tmp_path}/tiny.yaml: {key}: {message}\n"
    nothing_written(tmp_path)


def test_a_sampler_that_fails_on_its_first_trials_is_refused(tmp_path: Path) -> None:
    # Arguments the annotations cannot judge: the dry trials find them. A float range in a
    # BruteForceSampler fails at its first ask.
    path = write_study(tmp_path, sampler={"name": "BruteForceSampler"})
    with pytest.raises(StudyFileError) as info:
        load_study_file(path)
    assert info.value.key == "sampler"
    assert info.value.detail.startswith("BruteForceSampler() fails on a first trial: ")
    assert info.value.detail.endswith("; fix its arguments")


def test_an_exponent_float_argument_is_read_as_a_number(tmp_path: Path) -> None:
    path = write_study(tmp_path)
    doc = yaml.safe_load(Path(path).read_text())
    doc["pruner"] = {"name": "PercentilePruner", "percentile": "2.5e1"}  # YAML 1.1 reads a str
    Path(path).write_text(yaml.safe_dump(doc))
    assert load_study_file(path).pruner.kwargs == {"percentile": 25.0}


def test_the_dry_trials_accept_a_grid_they_cover(tmp_path: Path) -> None:
    # A GridSampler stops its study once the grid is covered; two dry trials cover this one.
    path = write_study(
        tmp_path,
        sampler={"name": "GridSampler"},
        search_space={"batch_size": {"categorical": [64]}},
    )
    assert load_study_file(path).sampler.name == "GridSampler"


def test_read_only_commands_do_not_probe_for_writes(tmp_path: Path) -> None:
    # `status`, `plot` and the like open a study without writing: no probe file, and a study
    # whose directories take no new files (a read-only mount) can still be looked at
    path = write_study(tmp_path, checkpoints={"dir": "/proc/hpsearch-ro"})
    with pytest.raises(StudyFileError, match=r"checkpoints\.dir"):
        load_study_file(path)
    assert load_study_file(path, writable=False).checkpoints.dir == "/proc/hpsearch-ro"
