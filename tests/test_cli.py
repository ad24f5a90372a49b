"""The read-only commands on a real study: status, tree, plot, export, best, gc, verify,
check-resume; and the Python entry point `hpsearch.load`."""

from __future__ import annotations

import json
import os

import matplotlib.image
import pandas as pd
import pytest
from safetensors.torch import load_file

import hpsearch
from hpsearch.cli import main
from hpsearch.report.plot import branch_plot_data
from hpsearch.report.status import study_view
from hpsearch.search.session import Session
from studyutil import write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> str:
    path = write_study(tmp_path_factory.mktemp("cli"), name="cli")
    assert main(["run", path]) == 0
    return path


def test_status_and_tree(study, capsys):
    assert main(["status", study]) == 0
    out = capsys.readouterr().out
    for n in range(8):
        assert f"{n}  " in out
    assert "COMPLETE" in out and "PRUNED" in out
    assert max(len(line) for line in out.splitlines()) <= 120
    assert main(["status", study, "--wide"]) == 0
    assert "batch_size=" in capsys.readouterr().out  # full names, not the abbreviations
    assert main(["tree", study]) == 0
    out = capsys.readouterr().out
    assert "warm-up:" in out and "base" in out and "deleted" in out.splitlines()[0]
    assert main(["tree", study, "--all"]) == 0
    out = capsys.readouterr().out  # the deleted checkpoints too
    assert "trial 0" in out and " deleted\n" in out and "not shown" not in out


def test_plot_png_svg_and_bad_suffix(study, tmp_path, capsys):
    png = tmp_path / "p.png"
    assert main(["plot", study, "-o", str(png)]) == 0
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 500 and img.shape[1] > 800
    svg = tmp_path / "p.svg"
    assert main(["plot", study, "-o", str(svg)]) == 0
    assert svg.read_text().lstrip().startswith("<?xml")
    assert main(["plot", study, "-o", str(tmp_path / "p.gif")]) == 2
    assert ".png, .svg or .pdf" in capsys.readouterr().err


def test_plot_data_of_the_real_study(study):
    s = Session.open(study, create=False)
    view = study_view(s)
    data = branch_plot_data(view)
    trials = s.study.get_trials()
    assert sorted(b.number for b in data.branches) == [t.number for t in trials]
    warm_end = s.attr("warmup_samples") / view.samples_per_epoch
    for b in data.branches:
        t = trials[b.number]
        assert b.x0 == pytest.approx(warm_end)  # every branch leaves the trunk at the base
        if t.state.name == "COMPLETE":
            assert b.x1 == pytest.approx(warm_end + 1.0, abs=0.05)  # one epoch of budget
        else:
            assert b.x1 < warm_end + 1.0  # pruned early
    assert data.branch(s.study.best_trial.number).is_best
    s.close()


def test_export_round_trips(study, tmp_path):
    for suffix in ("csv", "parquet", "json"):
        out = tmp_path / f"t.{suffix}"
        assert main(["export", study, "-o", str(out)]) == 0
        df = {"csv": pd.read_csv, "parquet": pd.read_parquet,
              "json": lambda p: pd.read_json(p, orient="records")}[suffix](out)  # fmt: skip
        assert len(df) == 8
        for col in ("number", "state", "value", "params_lr", "params_batch_size",
                    "parent_checkpoint", "fork_step", "steps_trained", "samples_trained",
                    "pruned_at", "retry_of", "final_checkpoint", "checkpoint_bytes",
                    "duration_s"):  # fmt: skip
            assert col in df.columns, (suffix, col)
    frame = hpsearch.load(study).dataframe()
    s = Session.open(study, create=False)
    for t in s.study.get_trials():
        row = frame[frame["number"] == t.number].iloc[0]
        assert row["state"] == t.state.name
        if t.state.name == "COMPLETE":
            assert row["value"] == pytest.approx(t.value)
        else:  # Optuna gives a pruned trial its last report as value; the export does not
            assert pd.isna(row["value"])
            last = t.intermediate_values[max(t.intermediate_values)]
            assert row["last_value"] == pytest.approx(last)
        assert row["params_lr"] == t.params["lr"]
    s.close()


def test_best_export(study, tmp_path, capsys):
    out = tmp_path / "best"
    assert main(["best", study, "--export", str(out)]) == 0
    text = capsys.readouterr().out
    s = Session.open(study, create=False)
    best = s.study.best_trial
    assert f"best trial: {best.number}" in text
    params = json.loads((out / "params.json").read_text())
    assert params["params"] == best.params and params["value"] == best.value
    weights = load_file(str(out / "model.safetensors"))
    final = s.store.load(params["checkpoint"]).tensors["model"]
    assert weights.keys() == final.keys()
    # the user's umask decides, as for params.json (safetensors alone writes 0600)
    mode = (out / "model.safetensors").stat().st_mode & 0o777
    assert mode == (out / "params.json").stat().st_mode & 0o777
    s.close()


def test_best_export_to_a_file_or_an_unwritable_place_is_refused(study, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["best", study, "--export", str(a_file)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert a_file.read_text() == "mine"
    below_a_file = a_file / "best"  # cannot be made (works as root too, unlike a 0o500 dir)
    assert main(["best", study, "--export", str(below_a_file)]) == 2
    assert f"--export {below_a_file}: cannot write" in capsys.readouterr().err
    assert main(["best", study, "--force"]) == 2
    assert "--force goes with --export" in capsys.readouterr().err


def test_best_export_replaces_only_its_own_files(study, tmp_path, capsys):
    out = tmp_path / "best"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the user's own model")
    assert main(["best", study, "--export", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors exists and was not written by" in err and "--force" in err
    assert (out / "model.safetensors").read_bytes() == b"the user's own model"
    assert not (out / "params.json").exists()  # nothing written: refused before the load
    assert main(["best", study, "--export", str(out), "--force"]) == 0
    assert load_file(str(out / "model.safetensors"))  # replaced by the export
    assert main(["best", study, "--export", str(out)]) == 0  # an export's own files: replaced
    assert sorted(os.listdir(out)) == ["model.safetensors", "params.json"]  # no temp left


def test_best_export_never_writes_through_a_link(study, tmp_path, capsys):
    out, target = tmp_path / "best", tmp_path / "elsewhere.json"
    out.mkdir()
    target.write_text("not to be touched")
    (out / "params.json").symlink_to(target)
    assert main(["best", study, "--export", str(out)]) == 2
    assert "params.json is a symbolic link" in capsys.readouterr().err
    assert main(["best", study, "--export", str(out), "--force"]) == 0
    assert target.read_text() == "not to be touched"
    assert not (out / "params.json").is_symlink()
    assert json.loads((out / "params.json").read_text())["written_by"] == "hpsearch best --export"


def test_gc_dry_run_changes_nothing(study, capsys):
    s = Session.open(study, create=False)
    before = {i.id for i in s.store.list()}
    s.close()
    assert main(["gc", study, "--dry-run"]) == 0
    assert "would delete 0 checkpoints" in capsys.readouterr().out
    s = Session.open(study, create=False)
    assert {i.id for i in s.store.list()} == before
    s.close()


def test_verify_finds_a_flipped_byte(tmp_path, capsys):
    path = write_study(tmp_path, name="v", trials={"n": 2, "epochs": 0.5, "eval_every": 0.25})
    assert main(["run", path]) == 0
    assert main(["verify", path]) == 0
    s = Session.open(path, create=False)
    base = s.attr("base_checkpoint")
    f = os.path.join(s.store.url, base, "model.safetensors")
    s.close()
    with open(f, "rb") as fh:
        data = bytearray(fh.read())
    data[-5] ^= 0xFF
    with open(f, "wb") as fh:
        fh.write(bytes(data))
    capsys.readouterr()
    assert main(["verify", path]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT  {base}" in out and "model.safetensors" in out


def test_check_resume_on_the_example_task(study, capsys):
    assert main(["check-resume", study, "--steps", "5"]) == 0
    assert "exact" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("hpsearch 0.")


def test_unknown_study_file(capsys):
    assert main(["status", "/nonexistent/x.yaml"]) == 2
    assert "no such study file" in capsys.readouterr().err


def test_an_in_memory_storage_on_the_command_line_is_refused(study, capsys):
    assert main(["run", study, "--storage", "sqlite:///:memory:"]) == 2
    assert "in-memory database is refused" in capsys.readouterr().err
