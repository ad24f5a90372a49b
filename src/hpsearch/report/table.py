"""The `hpsearch status` table: one line per trial, fitted to a terminal.

By default the table fits `WIDTH` columns: parameter names are abbreviated (a legend line below
the table spells them out), values take 3 significant digits in their shortest form
(`lr=4.51e-3 do=.274`), the parent checkpoint is named by whose it is (`base`, `#7`), and when
the parameters still do not fit they move to a second, indented line under their trial. With
`wide=True` nothing is shortened: full names, full values, checkpoint ids and notes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hpsearch.console import human_bytes
from hpsearch.report.views import StudyView, TrialView

WIDTH = 120  # columns the default table fits
PARAMS_INLINE = 44  # wider parameter text than this goes to a line of its own
CHECKPOINT_WIDTH = 13  # a checkpoint id nobody owns, shortened in the middle
NOTE_MIN = 20  # with less room than this for the notes, the params go to lines of their own
INDENT = "      "  # the second line of a trial whose params do not fit on its first


def shorten(text: str, width: int, *, middle: bool = False) -> str:
    """`text` cut to `width` characters with an ellipsis at the end (or in the middle)."""
    if len(text) <= width:
        return text
    keep = width - 1
    if not middle:
        return text[:keep] + "…"
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]


def compact_number(value: Any) -> str:
    """A parameter value in 3 significant digits, as short as it reads: `.274`, `4.51e-3`, `64`."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    # below 0.01 the exponent is what a reader compares (learning rates, weight decays)
    text = f"{value:.2e}" if abs(value) < 0.01 else f"{value:.3g}"
    if "e" in text:  # 4.51e-05 -> 4.51e-5, 1.00e-03 -> 1e-3
        mantissa, exponent = text.split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    if text.startswith(("0.", "-0.")):
        text = text.replace("0.", ".", 1)
    return text


def abbreviations(names: Iterable[str]) -> dict[str, str]:
    """A short, unique key per parameter name: initials of a multi-word name (`batch_size` ->
    `bs`), the first two letters of a longer single word (`dropout` -> `dr`), a name of up to
    three characters as it is; where two would collide, longer prefixes, then the full names."""
    names = sorted(set(names))

    def candidate(name: str, extra: int) -> str:
        words = [w for w in re.split(r"[_\-.\s]+", name) if w]
        if len(name) <= 3:
            return name
        if len(words) > 1:
            return "".join(w if w.isdigit() else w[: 1 + extra] for w in words).lower()
        return name[: 2 + extra]

    short: dict[str, str] = {}
    pending = names
    for extra in range(4):
        tried = {n: candidate(n, extra) for n in pending}
        uses = Counter([*short.values(), *tried.values()])
        short.update({n: s for n, s in tried.items() if uses[s] == 1})
        pending = [n for n in pending if n not in short]
    return {**short, **{n: n for n in pending}}


@dataclass(frozen=True)
class _Column:
    header: str
    right: bool = False


def _parent(view: StudyView, t: TrialView, wide: bool) -> str:
    """Where the trial started from: the base checkpoint, another trial's, or an id."""
    ref = t.parent_checkpoint
    if not ref:
        return "-"
    if wide:
        return ref
    if ref == view.base_checkpoint:
        return "base"
    if t.parent_trial is not None:
        return f"#{t.parent_trial}"
    parts = [p for p in ref.replace("\\", "/").split("/") if p]
    return shorten(parts[-1] if parts else ref, CHECKPOINT_WIDTH, middle=True)


def _note(t: TrialView, wide: bool) -> str:
    notes = []
    if t.retry_of is not None:
        notes.append(f"continues #{t.retry_of}")
    if t.state == "PRUNED" and t.pruned_at is not None:
        notes.append(f"pruned at epoch {t.pruned_at:.3g}")
    if t.fail_reason:
        reason = " ".join(t.fail_reason.split())
        notes.append(reason if wide else shorten(reason, 60))
    return "; ".join(notes)


def _params(t: TrialView, short: dict[str, str] | None) -> str:
    if short is None:
        return " ".join(
            f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
        )
    return " ".join(f"{short[k]}={compact_number(v)}" for k, v in t.params.items())


def _grid(
    view: StudyView,
    trials: Sequence[TrialView],
    params: Sequence[str],
    best: TrialView | None,
    metric: str,
    inline: bool,
    wide: bool,
) -> tuple[list[_Column], list[list[str]], list[int]]:
    """The columns, every trial's cells and each column's width (params only if `inline`)."""
    columns = [_Column("#", True), _Column("state"), _Column(metric, True)]
    columns += [_Column("gen", True)] if view.tree else []
    columns += [_Column("params")] if inline else []
    columns += [_Column("parent"), _Column("fork step", True), _Column("steps", True)]
    columns += [_Column("ckpt", True), _Column("note")]
    rows = []
    for t, p in zip(trials, params, strict=True):
        star = "*" if best is not None and t.number == best.number else ""
        value = "-" if t.value is None else (repr(t.value) if wide else f"{t.value:.4g}")
        cells = [f"{star}{t.number}", t.state, value]
        cells += ["-" if t.generation is None else str(t.generation)] if view.tree else []
        cells += [p] if inline else []
        cells += [_parent(view, t, wide), "-" if t.fork_step is None else str(t.fork_step)]
        cells += [str(t.steps_trained), human_bytes(t.checkpoint_bytes), _note(t, wide)]
        rows.append(cells)
    headers = [c.header for c in columns]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(columns))]
    return columns, rows, widths


def _room(widths: Sequence[int]) -> int:
    """What `WIDTH` leaves the last column after the others and their separators."""
    return WIDTH - sum(widths[:-1]) - 2 * (len(widths) - 1)


def format_status_table(view: StudyView, *, wide: bool = False) -> str:
    """The `hpsearch status` table: one line per trial (two when its params do not fit), the
    parameter legend and a summary.

    Columns: number (the best one starred), state, value, (in a fork tree) its generation,
    params, parent (the base, the trial it forked from or a checkpoint id), fork step, steps
    trained, checkpoint bytes (binary units), and a note (continuation of a crashed trial, where
    it was pruned, why it failed). Every line fits `WIDTH` columns unless `wide`.
    """
    best = view.best()
    trials = sorted(view.trials, key=lambda t: t.number)
    short = None if wide else abbreviations(k for t in trials for k in t.params)
    params = [_params(t, short) or "-" for t in trials]
    metric = view.metric if wide or len(view.metric) <= 8 else "value"
    inline = wide or max(map(len, params), default=0) <= PARAMS_INLINE
    columns, rows, widths = _grid(view, trials, params, best, metric, inline, wide)
    if inline and not wide and _room(widths) < min(NOTE_MIN, widths[-1]):
        inline = False  # the notes would be cut short: the params go to a line of their own
        columns, rows, widths = _grid(view, trials, params, best, metric, inline, wide)
    if not wide:  # the note takes what the other columns leave
        widths[-1] = min(widths[-1], max(_room(widths), NOTE_MIN // 2))
        for r in rows:
            r[-1] = shorten(r[-1], widths[-1])

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if col.right else c.ljust(w)
            for c, w, col in zip(cells, widths, columns, strict=True)
        ]
        return "  ".join(out).rstrip()

    lines = [line([c.header for c in columns]), line(["-" * w for w in widths])]
    for r, p in zip(rows, params, strict=True):
        lines.append(line(r))
        if not inline:
            lines.append(INDENT + p)
    lines += _legend(view, metric, short)
    lines += _summary(view, best, wide)
    return "\n".join(lines)


def _legend(view: StudyView, metric: str, short: dict[str, str] | None) -> list[str]:
    """What the abbreviations stand for, wrapped to `WIDTH`; nothing when none is abbreviated."""
    words = [f"{s}={n}" for n, s in sorted((short or {}).items(), key=lambda kv: kv[1]) if s != n]
    if metric != view.metric:
        words.insert(0, f"value={view.metric}")
    return _wrap(words, "where ", ", ") if words else []


def _wrap(words: Sequence[str], head: str, sep: str, width: int = WIDTH) -> list[str]:
    lines, current = [], head
    for k, w in enumerate(words):
        piece = w if current in (head, "  ") else sep + w
        if len(current) + len(piece) > width and current not in (head, "  "):
            lines.append(current + sep.rstrip())
            current, piece = "  ", w
        current += piece
        if k == len(words) - 1:
            lines.append(current)
    return lines


def _summary(view: StudyView, best: TrialView | None, wide: bool) -> list[str]:
    counts: dict[str, int] = {}
    for t in view.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    order = ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
    order += sorted(set(counts) - set(order))
    by_state = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
    parts = [f"{len(view.trials)} trials" + (f" ({by_state})" if by_state else "")]
    if best is not None:
        parts.append(f"best #{best.number}: {view.metric} = {best.value:.6g} ({view.direction})")
    else:
        parts.append("no completed trial yet")
    if view.disk_bytes:
        parts.append(f"checkpoints on disk: {human_bytes(view.disk_bytes)}")
    if wide:
        return ["; ".join(parts), *_tree_summary(view, best)]
    return _wrap(parts, "", "; ") + _tree_summary(view, best)


def _tree_summary(view: StudyView, best: TrialView | None) -> list[str]:
    """A fork tree's generations (nodes, and how many were kept at each rung) and the
    winner's lineage; nothing for other studies."""
    if not view.tree:
        return []
    by_number = {t.number: t for t in view.trials}
    nodes: Counter[int] = Counter()
    kept: dict[int, set[int]] = {}
    for t in view.trials:
        if t.retry_of is None:  # a retry is its node again
            nodes[t.generation or 0] += 1
        parent = by_number.get(t.parent_trial) if t.parent_trial is not None else None
        if parent is not None:
            kept.setdefault(parent.generation or 0, set()).add(parent.number)
    gens = [
        f"gen {g} {nodes[g]} nodes" + (f" ({len(kept[g])} kept)" if g in kept else "")
        for g in sorted(nodes)
    ]
    lines = _wrap(gens, f"fork tree, {len(nodes)} generations: ", ", ")
    if best is not None:
        lines += _wrap([f"#{n}" for n in view.lineage(best.number)], "winner's lineage: ", " → ")
    return lines
