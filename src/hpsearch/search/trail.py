"""The trail a failed attempt leaves: its full traceback in a per-trial log beside the study, the
part of it that is the user's code, and (with `hpsearch run --debug`) the traceback printed live.

A trial's record in Optuna keeps one line (`fail_reason`) and where the log is (`fail_log`); the
log keeps every failed attempt of the trial, newest last, so nothing a task raised is lost.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import time
import traceback
from functools import cache

DEBUG_ENV = "HPSEARCH_DEBUG"  # set by `hpsearch run --debug`; the workers it starts inherit it


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


@cache
def _library_dirs() -> tuple[str, ...]:
    """Where code that is not the user's lives: the standard library, site-packages (torch,
    optuna, Lightning...) and hpsearch itself."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= set(site.getsitepackages()) | {site.getusersitepackages()}
    paths.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # hpsearch/
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the traceback (or of what caused it) in the user's own code: a
    file that is not in the standard library, site-packages or hpsearch."""
    found = None
    for e in causes(exc):
        for frame in traceback.extract_tb(e.__traceback__):
            path = os.path.realpath(frame.filename)
            if not frame.filename.startswith("<") and not path.startswith(_library_dirs()):
                found = frame
        if found is not None:
            return found
    return None


def describe(exc: BaseException) -> str:
    """One line: what was raised, and where when it was the user's code."""
    what = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    frame = user_frame(exc)
    if frame is None:
        return what
    return (
        f"{what} (the task's code: {os.path.basename(frame.filename)}:{frame.lineno}, {frame.name})"
    )


def keep(log_dir: str, number: int, token: str, kind: str, exc: BaseException) -> str | None:
    """Append the attempt's full traceback to `<log_dir>/trial-<number>.log`; return that path
    (None when it cannot be written: the failure itself must still be recorded). Printed to
    stderr too under `--debug`."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if debug():
        print(f"--- trial {number}: {kind} ---\n{text}", file=sys.stderr, flush=True)
    path = os.path.join(log_dir, f"trial-{number}.log")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        os.makedirs(log_dir, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"=== {stamp} attempt {token[:16]} failed ({kind}) ===\n{text}\n")
    except OSError:
        return None
    return path


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it (`raise ... from`, or raised while handling), outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out
