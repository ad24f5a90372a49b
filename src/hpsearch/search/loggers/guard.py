"""Loggers never stall training: each call runs on a thread of its own and is waited for at
most `CALL_TIMEOUT_S`; a logger that fails (or does not answer) is switched off for the rest
of the run, with one warning, so the trials after it do not pay its timeouts again."""

from __future__ import annotations

import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

CALL_TIMEOUT_S = 60.0  # longer than any one logger's own bounded retries


class LoggerTimeout(Exception):
    """A logger's call did not return in time (it goes on in the background, unheard)."""


class RunLoggers:
    """The loggers' state over one run: which are switched off, and how many calls each was
    given (every call of every trial: a switched-off logger gets none)."""

    def __init__(self) -> None:
        self.off: dict[str, str] = {}  # logger name -> why
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def call(self, name: str, fn: Callable[[], Any]) -> None:
        """Run `fn` for the logger `name`, unless it is off; switch it off if `fn` fails."""
        if name in self.off:
            return
        self.calls[name] += 1
        try:
            bounded(fn, CALL_TIMEOUT_S)
        except Exception as exc:  # a logger's trouble must not fail the trial
            self.switch_off(name, f"{type(exc).__name__}: {_one_line(str(exc))}")

    def switch_off(self, name: str, why: str) -> None:
        with self._lock:
            if name in self.off:
                return
            self.off[name] = why
        print(f"warning: {name} failed and is off for the rest of this run: {why}",
              file=sys.stderr)  # fmt: skip


def bounded(fn: Callable[[], Any], timeout: float) -> Any:
    """`fn()`, on a daemon thread, waited for at most `timeout` seconds."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="hpsearch-logger", daemon=True).start()
    if not done.wait(timeout):
        raise LoggerTimeout(f"no answer in {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


_runs: dict[int, RunLoggers] = {}
_runs_lock = threading.Lock()


def run_of(settings: object) -> RunLoggers:
    """The run's loggers state: one per settings object, which a run holds from start to end
    (`hpsearch run`, each `--workers` process, a resume: each its own), dropped with it."""
    key = id(settings)
    with _runs_lock:
        found = _runs.get(key)
        if found is None:
            found = _runs[key] = RunLoggers()
            weakref.finalize(settings, _runs.pop, key, None)
        return found


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"
