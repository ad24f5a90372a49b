"""Saving in the background: training blocks only for an in-memory snapshot.

`AsyncSaver.save` copies the tensors into CPU buffers it keeps from one save to the next (after
the first save the copy runs at memcpy speed, with no page faults), deep-copies the state, and
hands the write to a background thread. At most one save is in flight: the next `save` first
waits for the previous one, and raises its error if it failed.

Thread-safety rule: the snapshot buffers are reused, so a snapshot must be complete before the
caller changes its tensors again, and a new snapshot may only start once the previous write is
done. Both hold by construction: `save` returns only after the copy, and waits for the previous
write before copying. One AsyncSaver must be used from one thread at a time.

    saver = AsyncSaver(store)
    saver.save({"model": model.state_dict()}, {"step": step})   # returns after the copy
    ...                                                          # keep training
    info = saver.wait()                                          # or close() at the end
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from hpsearch.checkpoint.format import CheckpointInfo, check_tensors
from hpsearch.checkpoint.hashing import empty_bytes
from hpsearch.checkpoint.store import CheckpointStore


def _new_buffer(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised CPU tensor like `t`: pinned for CUDA sources (fast device-to-host
    copies), else NumPy-allocated, which gets transparent huge pages (faster first fill)."""
    if t.device.type == "cuda" and torch.cuda.is_available():
        return torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    raw = empty_bytes(t.numel() * t.element_size())
    return raw.view(t.dtype).reshape(t.shape)


class AsyncSaver:
    """Snapshot now, write in a background thread, at most one save in flight.

    A failed background save raises at the next `save()`, `wait()` or `close()`.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hpsearch-async-save")
        self._pending: Future[CheckpointInfo] | None = None
        self._buffers: dict[tuple[str, str], torch.Tensor] = {}
        self._closed = False

    def __enter__(self) -> AsyncSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(
        self,
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        state: Mapping[str, Any],
        *,
        meta: Mapping[str, Any] | None = None,
        ckpt_id: str | None = None,
    ) -> Future[CheckpointInfo]:
        """Snapshot `tensors` and `state`, start writing them, and return the write's future.

        Waits for the previous save first (re-raising its error). When this returns, the caller
        may change its tensors and state freely.
        """
        if self._closed:
            raise RuntimeError("AsyncSaver is closed")
        self.wait()
        check_tensors(tensors)  # bad input fails here, in the caller, not in the thread
        snapshot = self._snapshot(tensors)
        # A JSON round trip is the deep copy that matches what will be written, and checks it.
        state_copy = json.loads(json.dumps(dict(state), allow_nan=True))
        meta_copy = json.loads(json.dumps(dict(meta or {}), allow_nan=True))
        self._pending = self._pool.submit(
            self.store.save, snapshot, state_copy, meta=meta_copy, ckpt_id=ckpt_id
        )
        return self._pending

    def _snapshot(
        self, tensors: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> dict[str, dict[str, torch.Tensor]]:
        out: dict[str, dict[str, torch.Tensor]] = {}
        used = set()
        on_gpu = False
        for group, named in tensors.items():
            out[group] = {}
            for name, t in named.items():
                key = (group, name)
                buf = self._buffers.get(key)
                if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                    buf = _new_buffer(t)
                    self._buffers[key] = buf
                src = t.detach()
                on_gpu |= src.device.type == "cuda"
                buf.copy_(src, non_blocking=src.device.type == "cuda")
                out[group][name] = buf
                used.add(key)
        if on_gpu:
            torch.cuda.synchronize()
        for key in set(self._buffers) - used:  # names that went away free their memory
            del self._buffers[key]
        return out

    def wait(self) -> CheckpointInfo | None:
        """Wait for the save in flight, if any; return its info or raise its error."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def close(self) -> None:
        """Finish the save in flight (raising its error) and stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
            self._buffers.clear()
