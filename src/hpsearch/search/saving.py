"""Checkpoints of a running study: record the row as pending, save (asynchronously), mark it
committed, and drop the checkpoint it supersedes. The store decides what is committed; the tree
records what it is."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from hpsearch.checkpoint import AsyncSaver, CheckpointInfo, CheckpointStore
from hpsearch.lineage import CheckpointKind, Lineage
from hpsearch.lineage.gc import Deletion, apply_gc
from hpsearch.training import Trainer


class Checkpointer:
    """Saves a trainer's state as a checkpoint of one trial (or the warm-up).

    At most one save is in flight. When a save commits, the checkpoint it superseded in the same
    chain is deleted at once (a chain keeps one committed checkpoint plus one being written), so
    a live trial never holds more than two.
    """

    def __init__(self, store: CheckpointStore, lineage: Lineage, *, async_save: bool) -> None:
        self.store = store
        self.lineage = lineage
        self.saver = AsyncSaver(store) if async_save else None
        self._inflight: tuple[str, Future[CheckpointInfo], str | None] | None = None
        self.bytes_written = 0

    def save(
        self,
        trainer: Trainer,
        *,
        trial: int,
        kind: CheckpointKind,
        parent: str | None,
        attempt: str | None,
        supersedes: str | None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Start saving and return the new id; `supersedes` is deleted once this one commits."""
        self.flush()
        ckpt_id = self.store.new_id()
        p = trainer.progress
        self.lineage.add_pending(
            ckpt_id, trial=trial, kind=kind, parent=parent, step=p.step, samples=p.samples,
            epoch=trainer.epoch, attempt=attempt,
        )  # fmt: skip
        tensors, state = trainer.state()
        state.update({"trial": trial, "kind": kind, "parent": parent, **(extra or {})})
        meta = {"trial": trial, "kind": kind, "step": p.step, "samples": p.samples}
        if self.saver is not None:
            future = self.saver.save(tensors, state, meta=meta, ckpt_id=ckpt_id)
        else:
            future = Future()
            try:
                future.set_result(self.store.save(tensors, state, meta=meta, ckpt_id=ckpt_id))
            except Exception as exc:
                future.set_exception(exc)
        self._inflight = (ckpt_id, future, supersedes)
        return ckpt_id

    def flush(self) -> str | None:
        """Wait for the save in flight; mark it committed (or failed, re-raising the error)."""
        if self._inflight is None:
            return None
        ckpt_id, future, supersedes = self._inflight
        self._inflight = None
        try:
            info = future.result()
        except BaseException:
            self.lineage.set_status(ckpt_id, "failed")
            raise
        self.lineage.set_status(ckpt_id, "committed", nbytes=info.nbytes)
        self.bytes_written += info.nbytes
        if supersedes is not None:
            row = self.lineage.get(supersedes)
            if row is not None and row.status == "committed" and row.kind in ("trial", "warmup"):
                apply_gc([Deletion.of(row, "superseded")], self.lineage, self.store.delete)
        return ckpt_id

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self.saver is not None:
                self.saver.close()
