"""What a run prints: progress bars on a terminal, plain lines elsewhere, and human sizes."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

# set to 0 by `hpsearch run --workers N`: several processes share one terminal, so each prints
# plain prefixed lines and none redraws a bar over another's
BARS_ENV = "HPSEARCH_BARS"


def live_display(out: TextIO) -> bool:
    """May output to `out` be redrawn in place (a terminal that this process alone draws on)?"""
    return bool(hasattr(out, "isatty") and out.isatty()) and os.environ.get(BARS_ENV) != "0"


def human_bytes(n: float) -> str:
    """Bytes in binary units, as disks and `du -h` count them: 0 B, 512 B, 1.5 KiB, 12.3 MiB,
    1.02 GiB (3 significant digits; whole numbers from 1000 of a unit up)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(size)} B"
            return f"{size:.3g} {unit}" if abs(size) < 1000 else f"{size:.0f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_time(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Bar:
    """A one-line progress bar redrawn in place on a terminal (at most 10 times a second);
    off a terminal it prints nothing until `close`, so logs stay readable."""

    def __init__(self, label: str, total: float, *, unit: str = "", out: TextIO | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.out = out or sys.stderr
        self.tty = live_display(self.out)
        self.start = time.monotonic()
        self._drawn = 0.0
        self.done = 0.0
        self.note = ""

    def update(self, done: float, note: str = "") -> None:
        self.done, self.note = done, note or self.note
        now = time.monotonic()
        if self.tty and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw()

    def _draw(self) -> None:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        width = 24
        fill = int(frac * width)
        elapsed = time.monotonic() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        line = (
            f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% "
            f"{self.done:.4g}/{self.total:.4g}{self.unit} {human_time(elapsed)}"
            f"<{human_time(eta)} {self.note}"
        )
        self.out.write(line[:160].ljust(100))
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self._draw()
            self.out.write("\n")
            self.out.flush()

    def clear(self) -> None:
        """Make room for a normal line (the bar is redrawn at the next update)."""
        if self.tty:
            self.out.write("\r" + " " * 100 + "\r")
            self.out.flush()
            self._drawn = 0.0


def say(msg: str = "", *, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(msg + "\n")
    out.flush()
