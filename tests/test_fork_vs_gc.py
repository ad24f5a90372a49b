"""Fork versus GC: workers (each with its own session and database engine, as separate processes
would have) fork from checkpoints while others collect garbage over the same tree, in a loop.
A worker pins a checkpoint, checks it is still committed, loads it and unpins it; collectors run
`collect_garbage` with its lease and pins. Bounded by iterations, not by the clock."""

from __future__ import annotations

import random
import threading

import torch

from hpsearch.lineage import WARMUP
from hpsearch.search.collect import collect_garbage
from hpsearch.search.session import Session
from hpsearch.testing.conformance.scheduler import tiny_study

FORKERS, FORKS, COLLECTORS, MADE = 3, 25, 2, 30


def _save(s: Session, step: int) -> str:
    ckpt_id = s.store.new_id()
    s.lineage.add_pending(ckpt_id, trial=WARMUP, kind="warmup", parent=None, step=step,
                          samples=step, epoch=step / 10)  # fmt: skip
    info = s.store.save({"model": {"w": torch.full((64,), float(step))}}, {"step": step},
                        ckpt_id=ckpt_id)  # fmt: skip
    s.lineage.set_status(ckpt_id, "committed", nbytes=info.nbytes)
    return ckpt_id


def test_forks_and_collections_race_without_losing_a_checkpoint(tmp_path):
    path = tiny_study(tmp_path)
    main = Session.open(path)
    base = _save(main, 0)
    main.set_attr("base_checkpoint", base)  # the warm-up is done: older warm-up rows may go
    errors: list[BaseException] = []
    loads = [0]
    done = threading.Event()

    def forker(i: int) -> None:
        s, rng, token = Session.open(path, create=False), random.Random(i), f"forker-{i}"
        try:
            for _ in range(FORKS):
                rows = s.lineage.checkpoints(statuses=("committed",))
                target = rng.choice(rows).id
                s.lineage.pin(target, token, ttl_s=60)
                try:
                    row = s.lineage.get(target)
                    if row is None or row.status != "committed":
                        continue  # collected before the pin: a worker picks another parent
                    loaded = s.store.load(target)  # must never be gone now
                    assert loaded.tensors["model"]["w"].numel() == 64
                    loads[0] += 1
                finally:
                    s.lineage.unpin(target, token)
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    def collector(i: int) -> None:
        s = Session.open(path, create=False)
        try:
            while not done.is_set():
                collect_garbage(s, f"collector-{i}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    def producer() -> None:
        try:
            for step in range(1, MADE + 1):
                _save(main, step)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=forker, args=(i,)) for i in range(FORKERS)]
    collectors = [threading.Thread(target=collector, args=(i,)) for i in range(COLLECTORS)]
    making = threading.Thread(target=producer)
    for t in [making, *threads, *collectors]:
        t.start()
    making.join()
    for t in threads:
        t.join()
    done.set()
    for t in collectors:
        t.join()
    assert errors == [], errors  # no FileNotFoundError, no CheckpointNotFound, nothing
    assert loads[0] > FORKERS * FORKS // 2  # most forks found their parent

    collect_garbage(main, "final")
    committed = {r.id for r in main.lineage.checkpoints(statuses=("committed",))}
    on_disk = {info.id for info in main.store.list()}
    assert committed == on_disk  # nothing leaked, nothing listed that is gone
    assert committed == {base}  # everything unreachable went
    assert main.lineage.pinned() == set()
    assert main.store.leftovers() == []
    main.close()
