"""The collectives of one trial's ranks (`Link`): JSON and decisions from rank 0, every rank's
RNG state, the training state rank 0 starts the followers from, the gradients summed over the
ranks in a fixed order, and rank 0's buffers. Rank 0's commands between training calls go
through the process group's store, which a follower may wait on for as long as rank 0 works on
other things. Nothing is pickled: JSON travels as UTF-8 bytes in uint8 tensors."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hpsearch.errors import RankLost, TaskError

_COMMAND = "hpsearch/command/"  # rank 0's commands in the store, numbered


def _as_bytes(obj: Any) -> torch.Tensor:
    data = json.dumps(obj, allow_nan=True).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _from_bytes(buf: torch.Tensor) -> Any:
    return json.loads(bytes(buf.numpy()).decode())


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise RankLost(f"rank 0 sent a tensor of unknown dtype {name!r}")
    return value


class Link:
    """The collectives of one trial's ranks. `why` says, when a collective fails, what became
    of the other ranks (rank 0 knows its followers' exit codes)."""

    def __init__(
        self,
        rank: int,
        world: int,
        device: torch.device,
        why: Callable[[], str] | None = None,
        store: Any = None,
    ) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.ctrl: Any = None  # the CPU group; None: the default group is gloo already
        self.why = why or (lambda: "")
        self.store = store  # rank 0's commands, which followers wait for between trials
        self.seq = 0

    @classmethod
    def connect(
        cls,
        store: Any,
        *,
        rank: int,
        world: int,
        device: torch.device,
        timeout_s: float,
        why: Callable[[], str] | None = None,
    ) -> Link:
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=timeout_s)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        link = cls(rank, world, device, why, store)
        if backend != "gloo":
            link.ctrl = dist.new_group(backend="gloo", timeout=timeout)
        return link

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _run(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RuntimeError as exc:  # gloo's "Connection closed by peer", a timeout, NCCL's
            text = " ".join(str(exc).split())[:300]
            raise RankLost(f"{what} failed: {text}{self.why()}") from exc

    # -- commands: through the store, so that a follower may wait for the next one as long as
    # rank 0 works on other things (a collective would time out)

    def post(self, command: dict[str, Any]) -> None:
        """Rank 0: the followers' next command."""
        self.seq += 1
        self.store.set(f"{_COMMAND}{self.seq}", json.dumps(command))
        if self.seq > 2:
            self.store.delete_key(f"{_COMMAND}{self.seq - 2}")  # every follower has read it

    def next_command(self) -> dict[str, Any]:
        """A follower: wait for rank 0's next command (a dead rank 0 ends the wait: the store
        lives in its process)."""
        self.seq += 1
        key = f"{_COMMAND}{self.seq}"
        while not self.store.check([key]):  # polled: a blocking wait warns at each timeout
            time.sleep(0.02)
        return dict(json.loads(self.store.get(key).decode()))

    # -- control: JSON and codes on the CPU ---------------------------------------------------

    def bcast_json(self, obj: Any = None) -> Any:
        """Rank 0's `obj`, on every rank."""

        def go() -> Any:
            buf = _as_bytes(obj) if self.rank == 0 else torch.empty(0, dtype=torch.uint8)
            n = torch.tensor([buf.numel()], dtype=torch.int64)
            dist.broadcast(n, 0, group=self.ctrl)
            if self.rank != 0:
                buf = torch.empty(int(n.item()), dtype=torch.uint8)
            dist.broadcast(buf, 0, group=self.ctrl)
            return obj if self.rank == 0 else _from_bytes(buf)

        return self._run("a message from rank 0", go)

    def bcast_code(self, code: int = 0) -> int:
        def go() -> int:
            t = torch.tensor([code], dtype=torch.int64)
            dist.broadcast(t, 0, group=self.ctrl)
            return int(t.item())

        return int(self._run("rank 0's decision", go))

    def gather_json(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""

        def go() -> list[Any]:
            buf = _as_bytes(obj)
            n = torch.tensor([buf.numel()], dtype=torch.int64)
            sizes = [torch.zeros_like(n) for _ in range(self.world)]
            dist.all_gather(sizes, n, group=self.ctrl)
            longest = max(int(s.item()) for s in sizes)
            padded = torch.zeros(longest, dtype=torch.uint8)
            padded[: buf.numel()] = buf
            out = [torch.empty_like(padded) for _ in range(self.world)]
            dist.all_gather(out, padded, group=self.ctrl)
            return [_from_bytes(b[: int(s.item())]) for b, s in zip(out, sizes, strict=True)]

        return list(self._run("gathering the ranks' RNG states", go))

    def bcast_state(
        self,
        tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """Rank 0's training state (`Trainer.state()`), on every rank: one JSON header with
        the tensors' manifest, then their bytes in one buffer."""
        header = None
        parts: list[torch.Tensor] = []
        if self.rank == 0:
            assert tensors is not None and info is not None
            manifest = []
            for group, named in tensors.items():
                for name, t in named.items():
                    flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                    parts.append(flat)
                    manifest.append([group, name, str(t.dtype), list(t.shape), flat.numel()])
            header = {"info": info, "groups": list(tensors), "manifest": manifest}
        header = self.bcast_json(header)
        total = sum(int(m[4]) for m in header["manifest"])
        if self.rank == 0:
            buf = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
        else:
            buf = torch.empty(total, dtype=torch.uint8)
        self._run("the state rank 0 sent", lambda: dist.broadcast(buf, 0, group=self.ctrl))
        if self.rank == 0:  # it has them: no copy back out of the buffer
            return {g: dict(d) for g, d in (tensors or {}).items()}, dict(header["info"])
        out: dict[str, dict[str, torch.Tensor]] = {g: {} for g in header["groups"]}
        at = 0
        for group, name, dtype, shape, size in header["manifest"]:
            piece = buf[at : at + size].clone()  # its own storage: aligned for any dtype
            out.setdefault(group, {})[name] = piece.view(_dtype(dtype)).reshape(shape)
            at += size
        return out, dict(header["info"])

    # -- training: gradients and buffers on the trial's device ---------------------------------

    def reduce_grads(self, model: torch.nn.Module, value: float) -> float:
        """Sum every rank's (share-weighted) gradients and loss value; returns the summed value.
        A parameter without a gradient on every rank keeps none, as in a 1-process run."""
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise TaskError(
                    "a sparse gradient (an Embedding with sparse=True): trials.processes > 1 "
                    "sums dense gradients only; use sparse=False"
                )
        meta = torch.tensor(
            [value] + [0.0 if p.grad is None else 1.0 for p in params], dtype=torch.float64
        )
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, p in enumerate(params):
            by_dtype.setdefault(p.dtype, []).append(i)

        def go() -> None:
            dist.all_reduce(meta, group=self.ctrl)
            for indices in by_dtype.values():
                flat = torch.cat([_grad(params[i]).reshape(-1) for i in indices])
                dist.all_reduce(flat)
                at = 0
                for i in indices:
                    p = params[i]
                    n = p.numel()
                    if meta[i + 1] > 0:
                        chunk = flat[at : at + n].view_as(p)
                        if p.grad is None:
                            p.grad = chunk.clone()
                        else:
                            p.grad.copy_(chunk)
                    at += n

        self._run("summing the gradients", go)
        return float(meta[0])

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers on every rank."""
        buffers = [b for b in model.buffers()]
        if not buffers:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for b in buffers:
            by_dtype.setdefault(b.dtype, []).append(b)

        def go() -> None:
            for group in by_dtype.values():
                flat = torch.cat([b.detach().reshape(-1) for b in group])
                dist.broadcast(flat, 0)
                if self.rank != 0:
                    at = 0
                    with torch.no_grad():
                        for b in group:
                            b.copy_(flat[at : at + b.numel()].view_as(b))
                            at += b.numel()

        self._run("sending rank 0's buffers", go)


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)
