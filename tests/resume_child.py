"""Training runs in their own processes, for the kill tests:
`python resume_child.py STORE LOG POINT...`, one run per POINT (`end`, `step:K` or `save:N:W`),
one after the other, each in a fork of this process (torch is imported once, and no torch op
runs before the forks); one line per run on stdout: `POINT died SIGNAL` or `POINT ended`.

It trains the digits task (dropout, AdamW, the task's own LR scheduler) to a fixed budget,
checkpointing every 7 steps into the store; if the store holds a committed checkpoint it resumes
from the newest. Every step appends `step loss` to LOG and every save writes `saving` first.
With a kill point it SIGKILLs itself there -- after its Kth step (`step:K`), or inside its Nth
save at the Wth write of checkpoint bytes (`save:N:W`) -- the same as a kill from outside at
that very point, on a fast machine or a loaded one. A 24 MB buffer in the model makes each save
many writes long.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from digits import DigitsMLP

from hpsearch.checkpoint import hashing, open_store
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


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Log(Hooks):
    def __init__(self, store, log, kill: str | None):
        self.store, self.log = store, log
        self.kill = kill.split(":") if kill else None
        self.steps = self.saves = 0

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self.log.write(f"{trainer.progress.step} {loss.hex()}\n")
        self.log.flush()
        self.steps += 1
        if self.kill and self.kill[0] == "step" and self.steps == int(self.kill[1]):
            die()

    def on_checkpoint(self, trainer: Trainer) -> None:
        self.log.write("saving\n")
        self.log.flush()
        self.saves += 1
        tensors, state = trainer.state()
        real = hashing.write_all
        if self.kill and self.kill[0] == "save" and self.saves == int(self.kill[1]):
            writes = [0]

            def write_then_die(f, view):  # dies at the Wth write of this save
                writes[0] += 1
                if writes[0] == int(self.kill[2]):
                    die()
                real(f, view)

            hashing.write_all = write_then_die
        try:
            self.store.save(tensors, state, meta={"step": trainer.progress.step})
        finally:
            hashing.write_all = real


def latest(store):
    infos = store.list()
    return max(infos, key=lambda i: i.meta["step"]) if infos else None


def main(store_url: str, log_path: str, kill: str | None = None) -> None:
    task = PaddedDigits()
    store = open_store(store_url)
    info = latest(store)
    if info is None:
        trainer = Trainer.create(task, HPARAMS, seed=3, total_samples=92 * 64)
    else:
        loaded = store.load(info.id)
        trainer = Trainer.restore(task, loaded.tensors, loaded.state)
    with open(log_path, "a") as log:
        trainer.train(BUDGET, hooks=Log(store, log, kill), eval_every=EVAL, checkpoint_every=CKPT)
        log.write("done\n")


if __name__ == "__main__":
    for point in sys.argv[3:]:
        pid = os.fork()
        if pid == 0:
            main(sys.argv[1], sys.argv[2], None if point == "end" else point)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            print(point, "died", os.WTERMSIG(status), flush=True)
        else:
            print(point, "ended" if os.WEXITSTATUS(status) == 0 else "failed", flush=True)
