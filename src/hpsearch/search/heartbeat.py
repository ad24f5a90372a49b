"""Heartbeats from a thread, as Optuna's own heartbeat: a worker is alive while its process is,
however long one `evaluate()` or one step takes.

The training thread registers the attempts it runs (`watch`) and reads whether another worker
took one over (`lost`) between steps; the counts it trained ride along with the next beat, so
`hpsearch status` sees a running trial's progress.
"""

from __future__ import annotations

import sys
import threading

from hpsearch.lineage import Lineage


class Heartbeat:
    def __init__(self, lineage: Lineage, every_s: float) -> None:
        self.lineage, self.every_s = lineage, every_s
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int] | None] = {}  # token -> (steps, samples)
        self._lost: set[str] = set()
        self._stop = threading.Event()
        self._warned = False
        self._thread: threading.Thread | None = None  # started by the first `watch`

    def watch(self, token: str) -> None:
        with self._lock:
            self._counts[token] = None
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="hpsearch-heartbeat", daemon=True
                )
                self._thread.start()

    def forget(self, token: str) -> None:
        with self._lock:
            self._counts.pop(token, None)
            self._lost.discard(token)

    def count(self, token: str, steps: int, samples: int) -> None:
        """What the attempt trained so far: written with its next beat."""
        with self._lock:
            if token in self._counts:
                self._counts[token] = (steps, samples)

    def lost(self, token: str) -> bool:
        """Was the attempt taken over by another worker (its heartbeat refused)?"""
        with self._lock:
            return token in self._lost

    def beat(self) -> None:
        """Refresh every watched attempt now."""
        with self._lock:
            todo = list(self._counts.items())
        for token, counts in todo:
            steps, samples = counts if counts is not None else (None, None)
            alive = self.lineage.heartbeat(token, steps=steps, samples=samples)
            if not alive:
                with self._lock:
                    if token in self._counts:
                        self._lost.add(token)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except Exception as exc:  # a database hiccup: the next beat tries again
                if not self._warned:
                    self._warned = True
                    print(f"warning: heartbeat failed (will retry): {exc}", file=sys.stderr)
