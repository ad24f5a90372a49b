"""The export (written for real, read back with pandas, compared by value), the status table
and the tree text."""

from __future__ import annotations

import builtins
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from hpsearch.console import human_bytes
from hpsearch.errors import UsageError
from hpsearch.lineage import WARMUP, CheckpointRow
from hpsearch.report.export import (
    MissingDependency,
    evaluations_dataframe,
    read_export,
    trials_dataframe,
    write_export,
)
from hpsearch.report.table import WIDTH, abbreviations, compact_number, format_status_table
from hpsearch.report.tree import tree_text
from hpsearch.report.views import StudyView, TrialView
from hpsearch.testing import synthetic_study

COLUMNS = [
    "number",
    "state",
    "value",
    "last_value",
    "winner",
    "params_batch_size",
    "params_dropout",
    "params_lr",
    "params_optimizer",
    "params_use_bn",
    "metric_val_accuracy",
    "metric_val_loss",
    "generation",
    "parent_trial",
    "parent_checkpoint",
    "fork_step",
    "steps_trained",
    "samples_trained",
    "pruned_at",
    "retry_of",
    "final_checkpoint",
    "final_checkpoint_deleted",
    "checkpoint_bytes",
    "duration_s",
    "start_unix_s",
    "end_unix_s",
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
            start_unix_s=1_790_000_000.125,
            end_unix_s=1_790_000_012.625,
            metrics={"val_accuracy": 0.1 + 0.2, "val_loss": 1.25},
            evaluations=(
                {
                    "step": 700,
                    "samples": 1797 * 7,
                    "index": 1,
                    "val_accuracy": 0.25,
                    "val_loss": 1.5,
                },
                {
                    "step": 800,
                    "samples": 1797 * 8,
                    "index": 2,
                    "val_accuracy": 0.1 + 0.2,
                    "val_loss": 1.25,
                },
            ),
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
            generation=1,
            parent_trial=1,
            final_checkpoint_deleted="runs/ckpt/t2/step-000800",
        ),
        TrialView(
            3,
            "RUNNING",
            None,
            {"lr": 1e-2, "dropout": 0.5},
            start_unix_s=1_790_000_020.5,
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
                metrics={"val_accuracy": 0.71},  # no val_loss: a metric may come and go
                evaluations=({"step": 650, "samples": 11680, "index": 1, "val_accuracy": 0.71},),
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
    # a pruned trial has no value (a plain best over the column would count it), only its last
    assert math.isnan(df.loc[5, "value"]) and df.loc[5, "last_value"] == 0.71
    assert df.loc[2, "last_value"] == 0.93 and math.isnan(df.loc[1, "last_value"])
    assert df.loc[0, "end_unix_s"] - df.loc[0, "start_unix_s"] == df.loc[0, "duration_s"]
    assert df.loc[3, "start_unix_s"] == 1_790_000_020.5 and math.isnan(df.loc[3, "end_unix_s"])
    assert df.loc[5, "pruned_at"] == 6.5 and math.isnan(df.loc[0, "pruned_at"])
    assert df.loc[0, "params_lr"] == 1.2345678901234567e-4
    assert df.loc[3, "params_batch_size"] is pd.NA and df.loc[3, "params_dropout"] == 0.5
    assert df.loc[4, "fork_step"] is pd.NA and math.isnan(df.loc[4, "end_progress"])
    assert df.loc[0, "checkpoint_bytes"] == 123_456_789
    assert df.loc[1, "fail_reason"].startswith("CUDA out of memory")
    # every metric at the trial's last evaluation; missing where a trial has none
    assert df.loc[0, "metric_val_accuracy"] == 0.1 + 0.2 and df.loc[0, "metric_val_loss"] == 1.25
    assert df.loc[5, "metric_val_accuracy"] == 0.71 and math.isnan(df.loc[5, "metric_val_loss"])
    assert df["metric_val_accuracy"].isna().sum() == 4
    # the fork tree's columns: only a trial with a generation has a parent_trial there
    assert df.loc[2, "generation"] == 1 and df.loc[2, "parent_trial"] == 1
    assert df["generation"].isna().sum() == 5 and df["parent_trial"].isna().sum() == 5
    assert df.loc[2, "final_checkpoint_deleted"] == "runs/ckpt/t2/step-000800"
    assert df.loc[2, "final_checkpoint"] is pd.NA


def test_the_long_table_has_one_row_per_evaluation_with_every_metric(tmp_path: Path) -> None:
    df = evaluations_dataframe(make_view())
    assert list(df.columns) == [
        "number", "index", "step", "samples", "epoch", "metric_val_accuracy", "metric_val_loss",
    ]  # fmt: skip
    assert df["number"].tolist() == [0, 0, 5] and df["index"].tolist() == [1, 2, 1]
    assert df["step"].tolist() == [700, 800, 650] and df["epoch"].tolist()[:2] == [7.0, 8.0]
    assert df["metric_val_accuracy"].tolist() == [0.25, 0.1 + 0.2, 0.71]
    assert df["metric_val_loss"].tolist()[:2] == [1.5, 1.25] and math.isnan(
        df.loc[2, "metric_val_loss"]
    )
    for suffix in (".csv", ".parquet", ".json"):
        write_export(df, tmp_path / f"e{suffix}")
        assert_frame_equal(read_export(tmp_path / f"e{suffix}"), df, check_exact=True)
        read = PANDAS_READERS[suffix](tmp_path / f"e{suffix}")
        for name in df.columns:
            assert same_values(read[name], df[name]), (suffix, name)


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
    assert lines[0].split()[:4] == ["#", "state", "value", "params"]
    body = lines[2:8]
    for t, line in zip(sorted(view.trials, key=lambda t: t.number), body, strict=True):
        assert line.split()[0].lstrip("*") == str(t.number)
        assert t.state in line
    assert body[2].split()[0] == "*2"  # the best, starred
    assert "118 MiB" in body[0] and "2 KiB" in body[2]
    assert "continues #1" in body[2] and "pruned at epoch 6.5" in body[5]
    assert "lr=1.23e-4 bs=64 op=adam ub=True dr=0 " in body[0]
    assert "step-000600" in body[0] and "runs/ckpt" not in body[0]
    for column in ("state", "params", "parent", "note"):  # columns line up
        start = lines[0].index(column)
        assert lines[1][start - 2 : start] == "  " and lines[1][start] == "-"
        assert {line[start - 2 : start] for line in body if len(line) > start} == {"  "}
    assert body[0][lines[0].index("state") :].startswith("COMPLETE")
    assert "CUDA out of memory,…" in body[1]  # cut to the room left: --wide shows it all
    assert lines[8:] == [
        "where value=val_accuracy, bs=batch_size, dr=dropout, op=optimizer, ub=use_bn",
        "6 trials (2 COMPLETE, 1 PRUNED, 1 FAIL, 1 RUNNING, 1 WAITING); "
        "best #2: val_accuracy = 0.93 (maximize);",
        "  checkpoints on disk: 5 GiB",  # the summary wraps at 120 columns too
    ]


def test_status_table_fits_120_columns_with_the_quickstarts_4_params() -> None:
    """The table was 167 columns wide on the quickstart, its params cut off at 60 characters."""
    view = synthetic_study(40, seed=0, budget=6.0)  # lr, dropout, batch_size, weight_decay
    view = replace(view, disk_bytes=3 * 1024**2)
    lines = format_status_table(view).splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert "…" not in "\n".join(lines)  # nothing cut: abbreviated, not shortened
    body = lines[2 : 2 + len(view.trials)]
    for t, line in zip(view.trials, body, strict=True):  # one line a trial, every param on it
        shown = f"lr={compact_number(t.params['lr'])} dr={compact_number(t.params['dropout'])}"
        assert line.split()[0].lstrip("*") == str(t.number) and shown in line
        assert f"wd={compact_number(t.params['weight_decay'])}" in line
    assert "where value=val_accuracy, bs=batch_size, dr=dropout, wd=weight_decay" in lines
    at = lines[0].index("parent")
    parents = {line[at:].split()[0] for line in body}
    assert parents == {"base"} | {f"#{t.retry_of}" for t in view.trials if t.retry_of is not None}


def test_status_table_moves_many_params_to_a_line_of_their_own_and_cuts_long_notes() -> None:
    params = {f"param_{k}": 10.0**-k for k in range(12)} | {"optimizer": "adamw"}
    reason = "RuntimeError: " + "a very long message " * 20
    trials = (
        TrialView(0, "COMPLETE", 0.9, params, None, None, 0.0, 2.0, 100, 1000),
        TrialView(1, "FAIL", None, params, None, None, 0.0, 1.0, 50, 500, fail_reason=reason),
    )
    view = StudyView("many", "loss", "minimize", True, 10, 0.0, 0, trials=trials)
    lines = format_status_table(view).splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert "params" not in lines[0]
    assert lines[2].split()[:3] == ["*0", "COMPLETE", "0.9"]
    assert lines[3] == (
        "      p0=1 p1=.1 p2=.01 p3=1e-3 p4=1e-4 p5=1e-5 p6=1e-6 p7=1e-7 p8=1e-8 p9=1e-9 "
        "p10=1e-10 p11=1e-11 op=adamw"
    )
    assert lines[4].split()[:2] == ["1", "FAIL"] and lines[4].endswith("…")
    assert lines[4][lines[0].index("note") :].startswith("RuntimeError: a very long")
    assert lines[6].startswith("where op=optimizer, p0=param_0, p1=param_1, p10=param_10, ")
    assert lines[6].endswith(",") and lines[7].startswith("  p") and lines[8].startswith("2 trials")


def test_status_table_wide_shows_everything() -> None:
    view = make_view()
    wide = format_status_table(view, wide=True)
    print(wide)
    assert "…" not in wide and "where " not in wide
    assert "lr=0.00012345678901234567 batch_size=64 optimizer='adam'" not in wide  # str, not repr
    assert "lr=0.00012345678901234567 batch_size=64 optimizer=adam use_bn=True dropout=0.0" in wide
    assert "runs/ckpt/warmup/step-000600" in wide and "runs/ckpt/t1/step-000650" in wide
    assert wide.splitlines()[0].split()[:3] == ["#", "state", "val_accuracy"]
    assert "0.30000000000000004" in wide  # the value in full
    assert 'CUDA out of memory, with a, comma and "quotes"' in wide


def test_status_table_empty_study() -> None:
    table = format_status_table(StudyView("empty", "loss", "minimize", False, 10, 1.0, 10))
    assert table.splitlines()[-1] == "0 trials; no completed trial yet"


def test_compact_numbers_and_abbreviations() -> None:
    values = (0.00451, 1e-3, 0.274, 64, 1.83e-05, 0.5, 12345.0, 0.01, -0.25, 3.0, 0.0, "adam")
    assert [compact_number(v) for v in values] == [
        "4.51e-3", "1e-3", ".274", "64", "1.83e-5", ".5", "1.23e4", ".01", "-.25", "3", "0", "adam",
    ]  # fmt: skip
    names = ["lr", "batch_size", "dropout", "weight_decay", "hidden", "hidden_size", "bs"]
    assert abbreviations(names) == {
        "lr": "lr",
        "bs": "bs",
        "batch_size": "basi",  # "bs" is taken by a parameter of that name
        "dropout": "dr",
        "weight_decay": "wd",
        "hidden": "hi",
        "hidden_size": "hs",
    }
    assert abbreviations(["momentum", "mode"]) == {"momentum": "mom", "mode": "mod"}


# --- the tree -------------------------------------------------------------------------------


def ckpt(id: str, trial: int, parent: str | None, step: int, status: str = "committed"):
    return CheckpointRow(
        id, "s", trial, None, "base" if trial == WARMUP else "step", parent, step, step * 10,
        step / 100, 2048 if status == "committed" else 0, status, float(step), float(step),
    )  # fmt: skip


def test_tree_hides_deleted_checkpoints_unless_all() -> None:
    """Trial 0 kept only its last checkpoint; trial 1's were all deleted and nothing hangs under
    them; trial 2 continues from trial 3's deleted checkpoint and keeps its own."""
    rows = [
        ckpt("w", WARMUP, None, 100),
        ckpt("a1", 0, "w", 200, "deleted"),
        ckpt("a2", 0, "a1", 300),
        ckpt("b1", 1, "w", 150, "deleted"),
        ckpt("c1", 3, "w", 150, "deleted"),
        ckpt("d1", 2, "c1", 250),
    ]
    trials = {0: ("COMPLETE", 0.9), 1: ("PRUNED", 0.5), 2: ("COMPLETE", 0.95), 3: ("FAIL", None)}
    text = tree_text("s", rows, trials)
    print(text)
    assert text.splitlines() == [
        "study s: 6 checkpoints recorded, 3 deleted not shown (--all shows them)",
        "  warm-up:",
        "    w  base   step 100     epoch 1       2 KiB",
        "      trial 0 COMPLETE 0.9:",
        "        a2  step   step 300     epoch 3       2 KiB",
        "      trial 3 FAIL:",
        "          trial 2 COMPLETE 0.95:",
        "            d1  step   step 250     epoch 2.5     2 KiB",
    ]
    full = tree_text("s", rows, trials, show_all=True).splitlines()
    assert full[0] == "study s: 6 checkpoints recorded"
    assert len(full) == 1 + 1 + 6 + 4  # header, the warm-up's and 4 trials' headers, 6 rows
    assert "      trial 1 PRUNED 0.5:" in full and any(" b1 " in f"{x} " for x in full)
    assert "        b1  step   step 150     epoch 1.5     deleted" in full


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


def test_a_retrys_reports_are_placed_from_its_first_attempts_fork() -> None:
    """A retry restores its attempt's trainer, whose evaluation indices count from the first
    attempt's fork: placed from the retry's own start, its curve ran past its budget's end."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from hpsearch.report.status import _segment_origins
    from hpsearch.search.records import PREFIX

    def frozen(number: int, state: TrialState, **attrs: int) -> Any:
        t = create_trial(
            state=state,
            value=0.9 if state == TrialState.COMPLETE else None,
            params={"lr": 0.01},
            distributions={"lr": FloatDistribution(1e-4, 1.0)},
            user_attrs={PREFIX + k: v for k, v in attrs.items()},
            intermediate_values={1: 0.5, 2: 0.6},
        )
        t.number = number
        return t

    trials = [
        frozen(0, TrialState.FAIL, fork_samples=600),
        frozen(1, TrialState.FAIL, fork_samples=900, retry_of=0),
        frozen(2, TrialState.COMPLETE, fork_samples=1200, retry_of=1),  # a retry of a retry
        frozen(3, TrialState.COMPLETE, fork_samples=600),
        frozen(4, TrialState.COMPLETE, fork_samples=700, retry_of=99),  # its attempt is gone
    ]
    assert _segment_origins(trials) == {0: 600, 1: 600, 2: 600, 3: 600, 4: 700}


def test_a_studys_export_says_when_each_trial_ran(tmp_path: Path) -> None:
    """Start and end times, from which an anytime curve over several workers is drawn; one
    worker runs its trials one after the other."""
    from hpsearch.cli import main
    from hpsearch.testing.conformance.scheduler import tiny_study

    path = tiny_study(tmp_path, tree=True)
    assert main(["run", path]) == 0
    out = tmp_path / "trials.csv"
    assert main(["export", path, "-o", str(out)]) == 0
    df = read_export(out).sort_values("start_unix_s")
    assert len(df) == 3 and df["end_unix_s"].notna().all()
    assert (df["end_unix_s"] >= df["start_unix_s"]).all()
    assert (df["end_unix_s"].iloc[:-1].to_numpy() <= df["start_unix_s"].iloc[1:].to_numpy()).all()
    took = zip(df["end_unix_s"] - df["start_unix_s"], df["duration_s"], strict=True)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in took)
