"""The conformance zoo (tests/zoo.py) trained by 2 ranks (gloo, CPU), for tests/test_zoo_ranks.py
and its fresh process, tests/zoo_ranks_child.py.

How the followers build an entry. A follower rank loads its task by spec string and builds it
with no arguments, once per `Team`, and loads its datasets then, before it sees any hparams;
every train() call then rebuilds its trainer from the state rank 0 sends. So every follower
loads `zoo_ranks:Ranks`, and:

- the entry's name travels in the hparams (`zoo_entry`), from which every rank's trainer is
  built: `Task.model(hparams)` picks the entry's `zoo.Spec` (model family, optimizer, scheduler,
  precision, data pipeline), which `optimizer`, `scheduler`, `loss` and the datasets then read;
  the loop's escape hatches (clipping, accumulation, precision) travel in the state itself;
- `Task.model` also gives the task the class of the entry's task kind (`KINDS`: a plain task,
  one with `training_step`, one with state of its own), where the loop looks `training_step`
  and `state_dict` up; the task's own state is loaded after `model` in a restore;
- the datasets are `Pipelines`: every zoo pipeline over the same samples, each sample given in
  the structure of the pipeline of the task's current entry (a follower trains one trainer at
  a time, and a DataLoader's workers start after the trainer is built);
- the DataLoader workers are a `Team` argument: one Team per number of workers (`groups`).

So two Teams serve every entry, in the test's process and two more in the fresh one (a Team
costs a process that imports torch: ~2 s here).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import zoo
import zoo_hatches
from hpsearch.training import Budget, Every, Hooks, Trainer, fork
from hpsearch.training.team import Team

WORLD = 2
ENTRY = "zoo_entry"  # the hparam that names the entry
TIMEOUT_S = 120.0
SLOW = os.environ.get("HPSEARCH_ZOO_RANKS_SLOW") == "1"  # also the entries left out as slow


class SparseBag(nn.Module):
    """A bag of embeddings with sparse gradients (Adagrad steps them in one process)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(zoo.VOCAB, zoo.DIM, sparse=True)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(zoo.DIM, zoo.CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = (x.abs() * 4).long().clamp_(0, zoo.VOCAB - 1)
        return self.head(self.drop(self.emb(tokens).mean(1)))


EXTRA_MODELS = {"sparse_embedding": SparseBag}

# the zoo's entries, and two of this file's: a fork to batches of 47 at the start of an epoch of
# 48 samples (batches of 47 and 1: rank 1 has no sample of the 1), and a sparse gradient
ENTRIES: dict[str, zoo.Spec] = {
    **zoo.ZOO,
    "ranks-empty_share": zoo.Spec(),
    "ranks-sparse_embedding": zoo.Spec(model="sparse_embedding", optimizer="adagrad"),
}
FORKS: dict[str, dict[str, Any]] = {"ranks-empty_share": {**zoo.FORK, "batch_size": 47}}


def fork_changes(name: str) -> dict[str, Any]:
    return FORKS.get(name, zoo.fork_changes(name))


# entries that do not train at 2 ranks, by design: each must fail with this error and words
REFUSED = {
    "ranks-sparse_embedding": (
        "TaskError",
        "sparse gradient",
        "the ranks sum dense gradients only (an Embedding with sparse=True is refused with a "
        "TaskError before any step)",
    ),
}

# entries left out (reported as skips); HPSEARCH_ZOO_RANKS_SLOW=1 runs them too
LEFT_OUT = {
    "model-compiled": (
        "torch.compile is slow here: every rank compiles the model again at each train() call "
        "(a follower rebuilds its trainer from rank 0's state), ~11 s for this entry's "
        "uninterrupted runs alone; HPSEARCH_ZOO_RANKS_SLOW=1 runs it"
    ),
    **dict.fromkeys(
        ("data-tuple-workers2", "model-cnn_batchnorm-sgd-augment-workers"),
        "DataLoader workers start at every epoch and evaluation on every rank (3-4 s an entry "
        "on each side here): data-augment-workers2 covers the workers loading each rank's "
        "share, model-cnn_batchnorm the BatchNorm; HPSEARCH_ZOO_RANKS_SLOW=1 runs it",
    ),
}

# entries that resume and fork bit for bit at 2 ranks, but whose math at 2 ranks is not one
# process's: the same number of ranks always gives the same run, another number another one
NOT_ONE_PROCESS = {
    "model-cnn_batchnorm": (
        "BatchNorm without SyncBatchNorm normalises each rank's share of a batch with that "
        "share's own mean and variance, and keeps rank 0's share's running statistics (sent to "
        "every rank before each step, as DDP's broadcast_buffers does)"
    ),
    "model-cnn_batchnorm-sgd-augment-workers": "BatchNorm without SyncBatchNorm, as cnn_batchnorm",
    "model-frozen_and_sometimes_unused": (
        "the task picks the branch from the batch's first label, and each rank reads the first "
        "label of its own share"
    ),
    "model-non_persistent_buffers": (
        "a buffer that forward updates from the batch (`seen` counts samples) counts rank 0's "
        "share only"
    ),
}

# entries whose math is one process's but whose random draws cannot be one process's: each rank
# augments its samples from its own RNG stream (dropout likewise: the math check sets it to 0)
RANDOM_DATA = {name for name, spec in ENTRIES.items() if spec.data == "augment"}


def _gradient(name: str) -> tuple[Any, ...]:
    """What an entry's gradient at 2 ranks depends on (at the fork's batch size, which the math
    check trains with). Not the optimizer nor the scheduler: they step the summed gradient, the
    same on every rank."""
    spec = ENTRIES[name]
    batch_size = fork_changes(name)["batch_size"]
    return spec.model, spec.data, spec.precision, repr(spec.training), spec.task, batch_size


# the math check's entries: one per gradient computation (the optimizer-* and scheduler-*
# entries compute model-mlp's)
_first: dict[tuple[Any, ...], str] = {}
for _name in ENTRIES:
    if _name not in REFUSED:
        _first.setdefault(_gradient(_name), _name)
MATH = list(_first.values())


class Losses(Hooks):
    """The per-step losses, and the size of each step's global batch."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.sizes: list[int] = []

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self.values.append(loss)
        self.sizes.append(len(indices))


class Pipelines(Dataset):
    """Every zoo pipeline over the same samples; a sample in the structure of the pipeline of
    `task`'s current entry."""

    def __init__(self, task: Any, n: int, seed: int) -> None:
        self.task, self.n = task, n
        self.sets = {data: make(n, seed) for data, make in zoo.DATA.items()}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.sets[self.task.spec.data][i]


class _ByEntry:
    """A zoo task whose entry comes from the hparams (see the module's docstring)."""

    spec: zoo.Spec

    def __init__(self) -> None:
        super().__init__(zoo.Spec())  # type: ignore[call-arg]  # until the hparams name one

    def datasets(self) -> tuple[Dataset, Dataset]:
        return Pipelines(self, zoo.N, 1), Pipelines(self, 16, 2)

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        self.spec = ENTRIES[hparams[ENTRY]]
        # the follower's one task takes the class of the entry's task kind: the loop looks up
        # `training_step` and `state_dict` on it (its own state is loaded after this call)
        self.__class__ = KINDS[self.spec.task]
        if self.spec.model in EXTRA_MODELS:
            return EXTRA_MODELS[self.spec.model](float(hparams["dropout"]))
        return super().model(hparams)  # type: ignore[misc, no-any-return]


class Ranks(_ByEntry, zoo.ZooTask):
    """The task every follower loads (`zoo_ranks:Ranks`), and the plain entries' task."""


class RanksStep(_ByEntry, zoo_hatches.StepTask):
    """The task of the entries with `Task.training_step`."""


class RanksEMA(_ByEntry, zoo_hatches.EMATask):
    """The task of the entries with state of the task's own."""


KINDS: dict[str, type[zoo.ZooTask]] = {"plain": Ranks, "training_step": RanksStep, "ema": RanksEMA}


def groups(names: list[str]) -> dict[int, list[str]]:
    """The entries by their DataLoader workers (one Team for each number), the refused ones
    last (their followers end)."""
    out: dict[int, list[str]] = {}
    for name in sorted(names, key=lambda n: n in REFUSED):
        out.setdefault(ENTRIES[name].workers, []).append(name)
    return out


def team(workers: int) -> Team:
    return Team(
        WORLD, task="zoo_ranks:Ranks", study_path=None, device=zoo.DEVICE,
        timeout_s=TIMEOUT_S, num_workers=workers, sizes=(zoo.N, 16),
    )  # fmt: skip


def each_in_teams(
    names: list[str], run: Callable[[Team, str], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """`run(team, name)` for each entry, in its group's Team. An entry that raises gets
    `{"error", "traceback"}`, and the next entries of its group a new Team (its followers may
    be gone, or still inside a collective)."""
    out: dict[str, dict[str, Any]] = {}
    for group, members in groups(names).items():
        pending = list(members)
        while pending:
            with team(group) as tm:
                while pending:
                    name = pending.pop(0)
                    try:
                        out[name] = run(tm, name)
                    except Exception as exc:
                        error = f"{type(exc).__name__}: {exc}"
                        out[name] = {"error": error, "traceback": traceback.format_exc()}
                        break
    return out


def checked() -> list[str]:
    """The entries the ranks train (the refused ones included: they must fail as they should)."""
    return [n for n in ENTRIES if SLOW or n not in LEFT_OUT]


def hparams(name: str) -> dict[str, Any]:
    return {**zoo.hparams(name), ENTRY: name}


def precision(name: str) -> str:
    """The precision an entry's forward pass runs in: fp32, fp16 or bf16."""
    spec = ENTRIES[name]
    return "bf16" if spec.precision == "bf16" else spec.training.precision


def create(name: str, hp: dict[str, Any] | None = None) -> Trainer:
    spec = ENTRIES[name]
    return Trainer.create(
        KINDS[spec.task](), hp or hparams(name), seed=7, total_samples=4 * zoo.N,
        num_workers=spec.workers, objective="val_loss", training=spec.training,
        device=zoo.DEVICE,
    )  # fmt: skip


def restore(name: str, loaded: Any) -> Trainer:
    return Trainer.restore(
        KINDS[ENTRIES[name].task](), loaded.tensors, loaded.state,
        num_workers=ENTRIES[name].workers, device=zoo.DEVICE,
    )  # fmt: skip


def train(trainer: Trainer, until_step: int) -> Losses:
    """Train to `until_step` steps since the run began (evaluating every 3 steps)."""
    losses = Losses()
    trainer.train(Budget(steps=until_step), hooks=losses, eval_every=Every(steps=3))
    return losses


def forked_run(trainer: Trainer, changes: dict[str, Any]) -> Losses:
    """Train a fresh trainer K steps, fork it with `changes`, train it to 2K."""
    train(trainer, zoo.K)
    fork(trainer, changes)
    return train(trainer, 2 * zoo.K)


def resumed_and_forked(
    tm: Team, name: str, load: Callable[[], Any], save: Callable[[Trainer], str]
) -> dict[str, Any]:
    """The fresh process's runs of the checkpoint taken after K steps (`load()` reads it; a
    restored trainer trains the very tensors it was given): the resumed run and the fork, each
    trained to 2K steps in `tm`; `save(trainer)` keeps an end state."""
    resumed = restore(name, load())
    tm.attach(resumed)
    losses = train(resumed, 2 * zoo.K)
    out = {"resume": save(resumed), "losses": losses.values}
    forked = restore(name, load())
    tm.attach(forked)
    fork(forked, fork_changes(name))
    losses = train(forked, 2 * zoo.K)
    out.update(fork=save(forked), fork_losses=losses.values, fork_sizes=losses.sizes)
    return out


def one_thread() -> None:
    """The zoo's one intra-op thread, here and in the followers (they take rank 0's)."""
    torch.set_num_threads(zoo.THREADS)
