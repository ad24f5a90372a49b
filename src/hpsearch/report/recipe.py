"""The winner as a recipe (`hpsearch best` prints it) and its replay (`hpsearch replay`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpsearch.search.replay import Replayed, Segment


def format_recipe(segments: Sequence[Segment], samples_per_epoch: int) -> list[str]:
    """One line per segment: who trained it, where (in epochs and samples), and the values that
    changed from the segment before (all of them for the first)."""
    lines, before = [], {}  # type: ignore[var-annotated]
    for seg in segments:
        who = "warm-up" if seg.trial is None else f"trial {seg.trial}"
        end = seg.end
        where = (
            f"epochs {seg.start / samples_per_epoch:.3g}-{end / samples_per_epoch:.3g}"
            if end is not None
            else f"from epoch {seg.start / samples_per_epoch:.3g}"
        )
        changed = {k: v for k, v in seg.hparams.items() if before.get(k) != v}
        what = " ".join(f"{k}={_short(v)}" for k, v in changed.items()) or "(continues)"
        lines.append(f"  {who:<10} {where:<18} {what}")
        before = seg.hparams
    return lines


def format_replay(r: Replayed, metric: str) -> list[str]:
    got = r.metrics.get(metric)
    out = [
        f"replayed trial {r.trial} from scratch in {r.seconds:.1f}s: {metric}="
        f"{got:.6g}" + (f" (the study: {r.value:.6g})" if r.value is not None else "")
    ]
    if r.value_differs:
        out.append(f"its {metric} DIFFERS from the study's record of trial {r.trial}")
    if not r.compared:
        out.append("its final checkpoint is not kept (see checkpoints.keep_best): nothing to "
                   "compare the weights with")  # fmt: skip
    elif not r.differs:
        out.append(f"bitwise identical to its final checkpoint ({r.compared} tensors: weights, "
                   "optimizer, RNG)")  # fmt: skip
    else:
        shown = ", ".join(r.differs[:5]) + (" ..." if len(r.differs) > 5 else "")
        out.append(f"DIFFERS from its final checkpoint in {len(r.differs)} of {r.compared} "
                   f"tensors: {shown}")  # fmt: skip
    return out


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
