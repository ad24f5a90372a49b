"""The export and the status table: written for real, read back with pandas, compared by value."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from hpsearch.console import human_bytes
from hpsearch.errors import UsageError
from hpsearch.report.export import (
    MissingDependency,
    format_status_table,
    read_export,
    trials_dataframe,
    write_export,
)
from hpsearch.report.views import StudyView, TrialView

COLUMNS = [
    "number",
    "state",
    "value",
    "params_batch_size",
    "params_dropout",
    "params_lr",
    "params_optimizer",
    "params_use_bn",
    "parent_checkpoint",
    "fork_step",
    "steps_trained",
    "samples_trained",
    "pruned_at",
    "retry_of",
    "final_checkpoint",
    "checkpoint_bytes",
    "duration_s",
    "fork_progress",
    "end_progress",
    "fail_reason",
]


def make_view(*, with_pruned: bool = True) -> StudyView:
    """Trials of every state with params of every type, some missing, and awkward floats."""
    base = {"parent_checkpoint": "runs/ckpt/warmup/step-000600", "fork_step": 600}
    trials = [
        TrialView(
            0,
            "COMPLETE",
            0.1 + 0.2,
            {
                "lr": 1.2345678901234567e-4,
                "batch_size": 64,
                "optimizer": "adam",
                "use_bn": True,
                "dropout": 0.0,
            },
            fork_progress=6.0,
            end_progress=8.0,
            steps_trained=200,
            samples_trained=12800,
            final_checkpoint="runs/ckpt/t0/step-000800",
            checkpoint_bytes=123_456_789,
            duration_s=12.5,
            **base,
        ),
        TrialView(
            1,
            "FAIL",
            None,
            {"lr": 3e-3, "batch_size": 32, "optimizer": "sgd", "use_bn": False},
            fork_progress=6.0,
            end_progress=6.7,
            steps_trained=70,
            samples_trained=2240,
            fail_reason='CUDA out of memory, with a, comma and "quotes"',
            **base,
        ),
        TrialView(
            2,
            "COMPLETE",
            0.93,
            {"lr": 3e-3, "batch_size": 32, "optimizer": "sgd", "use_bn": False},
            parent_checkpoint="runs/ckpt/t1/step-000650",
            fork_step=650,
            fork_progress=6.5,
            end_progress=8.0,
            steps_trained=150,
            samples_trained=4800,
            retry_of=1,
            checkpoint_bytes=2048,
            duration_s=30.25,
        ),
        TrialView(
            3,
            "RUNNING",
            None,
            {"lr": 1e-2, "dropout": 0.5},
            fork_progress=6.0,
            end_progress=7.0,
            steps_trained=100,
            samples_trained=6400,
            **base,
        ),
        TrialView(4, "WAITING", None, {}, None, None, 0.0, None, 0, 0),
    ]
    if with_pruned:
        trials.append(
            TrialView(
                5,
                "PRUNED",
                0.71,
                {
                    "lr": 0.1,
                    "batch_size": 128,
                    "optimizer": "adam",
                    "use_bn": True,
                    "dropout": 0.25,
                },
                fork_progress=6.0,
                end_progress=6.5,
                steps_trained=50,
                samples_trained=6400,
                pruned_at=6.5,
                duration_s=1.0,
                **base,
            )
        )
    return StudyView(
        name="digits-mlp",
        metric="val_accuracy",
        direction="maximize",
        classic=False,
        samples_per_epoch=1797,
        warmup_progress=6.0,
        warmup_steps=600,
        trials=tuple(reversed(trials)),
        disk_bytes=5 * 1024**3,
    )


def test_columns_order_and_dtypes() -> None:
    df = trials_dataframe(make_view())
    assert list(df.columns) == COLUMNS
    assert df["number"].tolist() == [0, 1, 2, 3, 4, 5]  # sorted by trial number
    dtypes = {c: str(t) for c, t in df.dtypes.items()}
    assert dtypes["number"] == "int64"
    assert dtypes["value"] == dtypes["pruned_at"] == dtypes["duration_s"] == "float64"
    assert dtypes["fork_step"] == dtypes["retry_of"] == dtypes["params_batch_size"] == "Int64"
    assert dtypes["params_use_bn"] == "boolean"
    assert dtypes["params_optimizer"] == dtypes["state"] == dtypes["fail_reason"] == "string"
    assert dtypes["steps_trained"] == dtypes["checkpoint_bytes"] == "int64"


def test_values() -> None:
    df = trials_dataframe(make_view()).set_index("number")
    assert df.loc[2, "retry_of"] == 1 and df["retry_of"].isna().sum() == 5
    assert df.loc[2, "value"] == 0.93 and math.isnan(df.loc[1, "value"])
    assert df.loc[5, "pruned_at"] == 6.5 and math.isnan(df.loc[0, "pruned_at"])
    assert df.loc[0, "params_lr"] == 1.2345678901234567e-4
    assert df.loc[3, "params_batch_size"] is pd.NA and df.loc[3, "params_dropout"] == 0.5
    assert df.loc[4, "fork_step"] is pd.NA and math.isnan(df.loc[4, "end_progress"])
    assert df.loc[0, "checkpoint_bytes"] == 123_456_789
    assert df.loc[1, "fail_reason"].startswith("CUDA out of memory")


def test_empty_study_has_every_fixed_column() -> None:
    view = StudyView("empty", "loss", "minimize", False, 10, 1.0, 10)
    df = trials_dataframe(view)
    assert len(df) == 0 and "number" in df.columns and "fail_reason" in df.columns


def same_values(a: pd.Series, b: pd.Series, rel_tol: float = 0.0) -> bool:
    """Equal cell by cell, missing (None, NaN, NA, NaT) equal to missing, floats to rel_tol."""
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        if pd.isna(x) or pd.isna(y):
            if not (pd.isna(x) and pd.isna(y)):
                return False
        elif isinstance(x, float) or isinstance(y, float):
            if not math.isclose(float(x), float(y), rel_tol=rel_tol):
                return False
        elif x != y:
            return False
    return True


PANDAS_READERS = {
    ".csv": pd.read_csv,
    ".parquet": pd.read_parquet,
    ".json": lambda p: pd.read_json(p, orient="records", precise_float=True),
}


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
@pytest.mark.parametrize("with_pruned", [True, False])
def test_round_trip(tmp_path: Path, suffix: str, with_pruned: bool) -> None:
    df = trials_dataframe(make_view(with_pruned=with_pruned))
    path = tmp_path / f"trials{suffix}"
    write_export(df, path)

    # exactly, dtypes included, through our reader
    assert_frame_equal(read_export(path), df, check_exact=True)

    # by value through plain pandas (which guesses dtypes and loses NA/NaN distinctions)
    read = PANDAS_READERS[suffix](path)
    assert list(read.columns) == list(df.columns)
    for name in df.columns:
        assert same_values(read[name], df[name]), name
    if suffix == ".parquet":
        assert_frame_equal(read, df, check_exact=True)  # parquet keeps the dtypes


def test_json_is_one_record_per_trial_and_plain_pandas_reads_it(tmp_path: Path) -> None:
    df = trials_dataframe(make_view())
    write_export(df, tmp_path / "t.json")
    records = json.loads((tmp_path / "t.json").read_text())
    assert [r["number"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert records[2]["retry_of"] == 1 and records[0]["retry_of"] is None
    assert records[0]["value"] == 0.1 + 0.2  # exact: floats are written in full
    read = pd.read_json(tmp_path / "t.json", orient="records")  # pandas' defaults
    for name in df.columns:  # its default float parser is off in the 12th digit
        assert same_values(read[name], df[name], rel_tol=1e-10), name


def test_bad_suffix(tmp_path: Path) -> None:
    df = trials_dataframe(make_view())
    for bad in ("t.xlsx", "t"):
        with pytest.raises(ValueError, match=r"\.csv, \.parquet, \.json") as err:
            write_export(df, tmp_path / bad)
        assert isinstance(err.value, UsageError)
    assert list(tmp_path.iterdir()) == []


def test_parquet_without_pyarrow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_pyarrow(name: str, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(MissingDependency, match=r"pip install 'hpsearch\[parquet\]'"):
        write_export(trials_dataframe(make_view()), tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()


def test_status_table() -> None:
    view = make_view()
    table = format_status_table(view)
    lines = table.splitlines()
    print(table)
    assert lines[0].split()[:4] == ["#", "state", "val_accuracy", "params"]
    body = lines[2:-1]
    assert len(body) == len(view.trials)
    for t, line in zip(sorted(view.trials, key=lambda t: t.number), body, strict=True):
        assert line.split()[0].lstrip("*") == str(t.number)
        assert t.state in line
    assert body[2].split()[0] == "*2"  # the best, starred
    assert "118 MiB" in body[0] and "2 KiB" in body[2]
    assert "continues #1" in body[2] and "pruned at epoch 6.5" in body[5]
    assert "lr=0.000123 batch_size=64 optimizer=adam" in body[0]
    assert "warmup/step-000600" in body[0] and "runs/ckpt" not in body[0]
    for column in ("state", "params", "parent", "note"):  # columns line up
        start = lines[0].index(column)
        assert lines[1][start - 2 : start] == "  " and lines[1][start] == "-"
        assert {line[start - 2 : start] for line in body if len(line) > start} == {"  "}
    assert body[0][lines[0].index("state") :].startswith("COMPLETE")
    assert lines[-1] == (
        "6 trials (2 COMPLETE, 1 PRUNED, 1 FAIL, 1 RUNNING, 1 WAITING); "
        "best #2: val_accuracy = 0.93 (maximize); checkpoints on disk: 5 GiB"
    )


def test_status_table_empty_study() -> None:
    table = format_status_table(StudyView("empty", "loss", "minimize", False, 10, 1.0, 10))
    assert table.splitlines()[-1] == "0 trials; no completed trial yet"


def test_human_bytes() -> None:
    sizes = (0, 1023, 1024, 1536, 1000 * 1024, 5 * 1024**2, 3 * 1024**5)
    assert [human_bytes(n) for n in sizes] == [
        "0 B",
        "1023 B",
        "1 KiB",
        "1.5 KiB",
        "1000 KiB",
        "5 MiB",
        "3072 TiB",
    ]


def test_one_human_bytes_for_every_output() -> None:
    """`status`, `tree`, `gc` and the end-of-run summary all print sizes through this one
    function, in binary units: 4.2 million bytes read "4.2 MB" in the summary before."""
    assert human_bytes(4_200_000) == "4.01 MiB"
    assert human_bytes(4_200_000.0) == "4.01 MiB"  # sums of sizes may arrive as floats
