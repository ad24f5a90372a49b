"""A training run in its own process, for the kill tests: `python resume_child.py STORE LOG`.

It trains the digits task (dropout, AdamW, the task's own LR scheduler) to a fixed budget,
checkpointing every 7 steps into the store; if the store holds a committed checkpoint it resumes
from the newest. Every step appends `step loss` to LOG and every save writes `saving` first, so
the parent can kill it at chosen moments, mid-write included. A 24 MB buffer in the model makes
each save last long enough to be hit.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from digits import DigitsMLP

from hpsearch.checkpoint import open_store
from hpsearch.training import Budget, Every, Hooks, Trainer

HPARAMS = {
    "lr": 2e-3, "dropout": 0.2, "batch_size": 64, "weight_decay": 1e-3, "hidden": 64,
    "lr_warmup_steps": 10,
}  # fmt: skip
BUDGET = Budget(steps=92)
EVAL = Every(steps=10)
CKPT = Every(steps=7)


class PaddedDigits(DigitsMLP):
    def model(self, hparams: dict) -> torch.nn.Module:
        m = super().model(hparams)
        m.register_buffer("pad", torch.zeros(6_000_000))  # 24 MB: saves take a while
        return m


class Log(Hooks):
    def __init__(self, store, log):
        self.store, self.log = store, log

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self.log.write(f"{trainer.progress.step} {loss.hex()}\n")
        self.log.flush()

    def on_checkpoint(self, trainer: Trainer) -> None:
        self.log.write("saving\n")
        self.log.flush()
        tensors, state = trainer.state()
        self.store.save(tensors, state, meta={"step": trainer.progress.step})


def latest(store):
    infos = store.list()
    return max(infos, key=lambda i: i.meta["step"]) if infos else None


def main(store_url: str, log_path: str) -> None:
    task = PaddedDigits()
    store = open_store(store_url)
    info = latest(store)
    if info is None:
        trainer = Trainer.create(task, HPARAMS, seed=3, total_samples=92 * 64)
    else:
        loaded = store.load(info.id)
        trainer = Trainer.restore(task, loaded.tensors, loaded.state)
    with open(log_path, "a") as log:
        trainer.train(BUDGET, hooks=Log(store, log), eval_every=EVAL, checkpoint_every=CKPT)
        log.write("done\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
