"""The export (SPEC section 8): one row per trial, or one per evaluation, as a DataFrame, CSV,
Parquet or JSON.

`trials_dataframe` turns a `StudyView` into a pandas DataFrame with a fixed column order and
nullable dtypes (a `metric_<name>` column per metric `evaluate()` returns: its value at the
trial's last evaluation); `evaluations_dataframe` is the long table, one row per evaluation of
every trial with all its metrics. `write_export` writes either as CSV, Parquet or JSON (chosen by
suffix) and `read_export` reads any of the three back with the same dtypes::

    df = trials_dataframe(view)
    write_export(df, "trials.parquet")
    assert read_export("trials.parquet").equals(df)

The `hpsearch status` table is `hpsearch.report.table`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# pandas ships no type hints and pandas-stubs is not a dependency: typed as Any here
import pandas as pd  # type: ignore[import-untyped]

from hpsearch.errors import HpsearchError, UsageError
from hpsearch.report.views import StudyView, TrialView

EXPORT_SUFFIXES = (".csv", ".parquet", ".json")

# Every column but the params_<name> ones (which come right after "value"), with its dtype.
# Nullable dtypes wherever a value can be missing, so a missing fork step stays <NA> rather than
# turning the whole column into floats.
COLUMNS_BEFORE_PARAMS: dict[str, str] = {
    "number": "int64",
    "state": "string",
    "value": "float64",  # a COMPLETE trial's result only: empty for any other state
    "last_value": "float64",  # the objective at its last evaluation (a pruned trial's is here)
    "winner": "boolean",  # the study's winner (`hpsearch.search.winner`): true on one row
}
COLUMNS_AFTER_PARAMS: dict[str, str] = {  # after the params_ and then the metric_ columns
    "generation": "Int64",  # the fork tree's (empty in a study without one)
    "parent_trial": "Int64",
    "parent_checkpoint": "string",
    "fork_step": "Int64",
    "steps_trained": "int64",
    "samples_trained": "int64",
    "pruned_at": "float64",
    "retry_of": "Int64",
    "final_checkpoint": "string",
    "final_checkpoint_deleted": "string",  # what GC deleted (final_checkpoint is then empty)
    "checkpoint_bytes": "int64",
    "duration_s": "float64",
    "start_unix_s": "float64",  # when it started, in seconds since the Unix epoch
    "end_unix_s": "float64",  # when it ended (empty while it runs)
    "fork_progress": "float64",
    "end_progress": "float64",
    "fail_reason": "string",
}
PARAM_PREFIX = "params_"
METRIC_PREFIX = "metric_"
# the long table: one row per evaluation, then a metric_<name> column per metric
EVALUATION_COLUMNS: dict[str, str] = {
    "number": "int64",
    "index": "int64",  # the evaluation's index in its segment, as reported to the pruner
    "step": "int64",
    "samples": "int64",
    "epoch": "float64",
}


class ExportFormatError(UsageError, ValueError):
    """The export path has a suffix that no writer handles."""


class MissingDependency(HpsearchError, ImportError):
    """An optional dependency that this export format needs is not installed."""


def trials_dataframe(view: StudyView) -> pd.DataFrame:
    """One row per trial (by trial number), columns in the SPEC's order.

    Columns: number, state, value (a COMPLETE trial's result; empty for a pruned, failed or
    running trial, so that the best of the column is the best finished trial), last_value (the
    objective at the trial's last evaluation, whatever its state: where a pruned trial's value
    is), winner (true on the study's winner's row: every surface names that one),
    params_<name> for every parameter any trial has (sorted by name; missing where a trial
    lacks it), metric_<name> for every metric any trial's evaluations have (sorted; the value at
    its last evaluation), generation, parent_trial (the fork tree's), parent_checkpoint,
    fork_step, steps_trained, samples_trained, pruned_at, retry_of, final_checkpoint,
    final_checkpoint_deleted, checkpoint_bytes, duration_s, start_unix_s and end_unix_s (when it
    started and ended, in seconds since the Unix epoch: the trials of several workers overlap,
    so an anytime curve is drawn from these), fork_progress, end_progress, fail_reason.
    """
    trials = sorted(view.trials, key=lambda t: t.number)
    names = sorted({name for t in trials for name in t.params})
    metrics = sorted({name for t in trials for name in t.metrics})
    best = view.best()
    columns: dict[str, Any] = {}
    for name, dtype in COLUMNS_BEFORE_PARAMS.items():
        if name == "winner":
            winners = [best is not None and t.number == best.number for t in trials]
            columns[name] = pd.array(winners, dtype=dtype)
            continue
        columns[name] = pd.array([_missing_to_none(_cell(t, name)) for t in trials], dtype=dtype)
    for name in names:
        columns[PARAM_PREFIX + name] = _param_column([t.params.get(name) for t in trials])
    for name in metrics:
        columns[METRIC_PREFIX + name] = _floats([t.metrics.get(name) for t in trials])
    for name, dtype in COLUMNS_AFTER_PARAMS.items():
        columns[name] = pd.array([_missing_to_none(_cell(t, name)) for t in trials], dtype=dtype)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(trials)))


def evaluations_dataframe(view: StudyView) -> pd.DataFrame:
    """One row per evaluation of every trial's own segment (by trial number, then in order):
    number, index, step, samples, epoch, and metric_<name> for every metric evaluate() returned
    (sorted; missing where that evaluation lacks it). A trial's rows are recorded when an
    attempt of it ends: a running trial has none yet."""
    trials = sorted(view.trials, key=lambda t: t.number)
    rows = [(t.number, e) for t in trials for e in t.evaluations]
    keys = set(EVALUATION_COLUMNS) - {"number", "epoch"}
    metrics = sorted({k for _, e in rows for k in e if k not in keys})
    n = view.samples_per_epoch
    columns: dict[str, Any] = {
        "number": pd.array([number for number, _ in rows], dtype="int64"),
        "index": pd.array([int(e["index"]) for _, e in rows], dtype="int64"),
        "step": pd.array([int(e["step"]) for _, e in rows], dtype="int64"),
        "samples": pd.array([int(e["samples"]) for _, e in rows], dtype="int64"),
        "epoch": _floats([e["samples"] / n if n else None for _, e in rows]),
    }
    for name in metrics:
        columns[METRIC_PREFIX + name] = _floats([e.get(name) for _, e in rows])
    return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)))


def _cell(t: TrialView, name: str) -> Any:
    if name == "parent_trial" and t.generation is None:
        return None  # outside a fork tree the export's parent_trial is empty (see retry_of)
    if name == "value":  # the view gives a pruned trial its last value; the export does not
        return t.value if t.state == "COMPLETE" else None
    if name == "last_value":
        return t.intermediate[-1][1] if t.intermediate else t.value
    return getattr(t, name)


def _floats(values: Sequence[Any]) -> Any:
    return pd.array([math.nan if v is None else float(v) for v in values], dtype="float64")


def _missing_to_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _param_column(values: Sequence[Any]) -> Any:
    """The narrowest nullable dtype that holds a parameter's values (object if they are mixed)."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    if not present:
        return pd.array(values, dtype="float64")
    if kinds == {bool}:
        return pd.array(values, dtype="boolean")
    if kinds <= {int}:
        return pd.array(values, dtype="Int64")
    if kinds <= {int, float}:
        return pd.array([math.nan if v is None else float(v) for v in values], dtype="float64")
    if kinds == {str}:
        return pd.array(values, dtype="string")
    return pd.array(values, dtype=object)


def _check_suffix(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise ExportFormatError(
            f"export file must end in one of {', '.join(EXPORT_SUFFIXES)}, "
            f"but got {os.fspath(path)!r}"
        )
    return suffix


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise MissingDependency(
            "writing or reading Parquet needs pyarrow, which is not installed; "
            "install it with: pip install 'hpsearch[parquet]'"
        ) from e


def write_export(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write `df` to `path` as CSV, Parquet or JSON, chosen by the suffix.

    JSON is a list of records, one per trial, with null for missing values (and for NaN or
    infinite floats, which JSON cannot hold) and floats written in full (shortest repr), so it
    round-trips through `read_export` exactly and through `pandas.read_json(path,
    orient="records")` by value. Two things about pandas' reader: its default float parser is
    off in the 12th significant digit (pass `precise_float=True`), and pandas 3 reads a column
    named `*_at` that holds only nulls (`pruned_at` in a study with no pruned trial) as NaT dates.
    """
    suffix = _check_suffix(path)
    if suffix == ".parquet":
        _require_pyarrow()
        df.to_parquet(path, index=False, engine="pyarrow")
    elif suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        records = [
            {name: _json_value(value) for name, value in zip(df.columns, row, strict=True)}
            for row in df.itertuples(index=False, name=None)
        ]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(records, f, allow_nan=False, indent=1)
            f.write("\n")


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):  # numpy scalar -> Python scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a diverged value is as missing as an absent one
    return value


def read_export(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a file written by `write_export`, with the export's dtypes.

    Both tables (trials and evaluations) read back. Parquet and JSON keep each parameter's type
    (int, float, bool, str). CSV keeps none: there a params_<name> column is read from its text
    (integers, then floats, then True/False, else strings), and an empty string reads as missing.
    """
    suffix = _check_suffix(path)
    fixed = {**COLUMNS_BEFORE_PARAMS, **COLUMNS_AFTER_PARAMS, **EVALUATION_COLUMNS}
    if suffix == ".parquet":
        _require_pyarrow()
        df = pd.read_parquet(path, engine="pyarrow")
        dtypes = {name: _dtype(name, fixed) for name in df.columns}
        return df.astype({name: dtype for name, dtype in dtypes.items() if dtype})
    columns: dict[str, list[Any]]
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
        names = list(records[0]) if records else _columns([])
        columns = {n: [r.get(n) for r in records] for n in names}
    else:
        text = pd.read_csv(path, dtype=str, keep_default_na=False)
        columns = {n: [_from_csv(v, _dtype(n, fixed)) for v in text[n]] for n in text.columns}
    out = {}
    for name, values in columns.items():
        dtype = _dtype(name, fixed)
        out[name] = pd.array(values, dtype=dtype) if dtype else _param_column(values)
    return pd.DataFrame(out, index=pd.RangeIndex(len(next(iter(columns.values()), []))))


def _dtype(name: str, fixed: dict[str, str]) -> str | None:
    """A column's dtype by its name; None for a parameter (its values decide)."""
    if name.startswith(METRIC_PREFIX):
        return "float64"
    return fixed.get(name)


def _from_csv(text: str, dtype: str | None) -> Any:
    """One CSV cell as a Python value: by the column's dtype, or guessed for a parameter."""
    if text == "":
        return None
    if dtype == "string":
        return text
    if dtype == "boolean":
        return text == "True"
    if dtype is not None:
        return float(text) if dtype == "float64" else int(text)
    if text in ("True", "False"):
        return text == "True"
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def _columns(params: Iterable[str]) -> list[str]:
    return [
        *COLUMNS_BEFORE_PARAMS,
        *(PARAM_PREFIX + p for p in sorted(params)),
        *COLUMNS_AFTER_PARAMS,
    ]
