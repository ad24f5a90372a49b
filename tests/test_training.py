"""The training core: exact resume (real SIGKILLs), data order, forking semantics."""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from digits import DigitsMLP

from hpsearch.checkpoint import open_store
from hpsearch.errors import CheckpointMismatch, ForkError
from hpsearch.training import Budget, DataStream, Every, Hooks, Trainer, epoch_order, fork

HERE = os.path.dirname(os.path.abspath(__file__))
HP = {"lr": 2e-3, "dropout": 0.2, "batch_size": 64, "weight_decay": 1e-3, "hidden": 64}


def _states_equal(a: dict, b: dict) -> None:
    for group in ("model", "optimizer"):
        assert set(a[group]) == set(b[group])
        for k in a[group]:
            assert torch.equal(a[group][k], b[group][k]), f"{group}.{k} differs"


def _read_log(path: str) -> tuple[dict[int, str], bool]:
    losses: dict[int, str] = {}
    done = False
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts == ["done"]:
                done = True
            elif len(parts) == 2:
                step, loss = int(parts[0]), parts[1]
                # a step recomputed after a resume must give the very same loss
                assert losses.setdefault(step, loss) == loss, f"step {step} differs after resume"
    return losses, done


def test_sigkill_at_random_points_resumes_bitwise(tmp_path):
    """6 real SIGKILLs (after a random number of steps, and in the middle of checkpoint
    writes), each followed by a resume from the newest committed checkpoint: the end state and
    every step's loss equal those of an uninterrupted run. The child kills itself at the chosen
    event, so every kill lands where it was meant to, however loaded the machine."""
    child = [sys.executable, os.path.join(HERE, "resume_child.py")]
    ref_log = tmp_path / "ref.log"
    ref = subprocess.run([*child, str(tmp_path / "ref"), str(ref_log), "end"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert ref.stdout.split() == ["end", "ended"]
    ref_losses, done = _read_log(str(ref_log))
    assert done and len(ref_losses) == 92

    rng = random.Random(1)
    store_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    log.write_text("")
    kinds = ["steps", "saving"] * 3  # 6 kills: each resume pays a 24 MB load (see resume_child)
    rng.shuffle(kinds)
    points = [
        f"step:{rng.randrange(1, 7)}"  # 1-6 steps after the resume
        if kind == "steps"  # else inside the first or second save of the run, at a chosen write
        else f"save:{rng.randrange(1, 3)}:{rng.randrange(1, 4)}"
        for kind in kinds
    ]
    runs = subprocess.run([*child, str(store_dir), str(log), *points, "end"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    expected = [f"{p} died {int(signal.SIGKILL)}" for p in points] + ["end ended"]
    assert runs.stdout.splitlines() == expected  # each died at its point, then one resumed
    losses, done = _read_log(str(log))
    assert done
    assert losses == ref_losses

    ref_store, store = open_store(str(tmp_path / "ref")), open_store(str(store_dir))
    last = max(ref_store.list(), key=lambda i: i.meta["step"])
    got = max(store.list(), key=lambda i: i.meta["step"])
    a, b = ref_store.load(last.id), store.load(got.id)
    _states_equal(a.tensors, b.tensors)
    assert a.state["metrics"] == b.state["metrics"]
    assert a.state["rng"] == b.state["rng"]
    # every listed checkpoint loads; the killed writes are recognisable leftovers
    for info in store.list():
        store.load(info.id)


def test_epoch_order_depends_on_seed_and_epoch_only():
    a, b = epoch_order(0, 3, 100), epoch_order(0, 3, 100)
    assert torch.equal(a, b)
    assert not torch.equal(a, epoch_order(0, 4, 100))
    assert not torch.equal(a, epoch_order(1, 3, 100))
    assert sorted(a.tolist()) == list(range(100))


def _indices(stream: DataStream, n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        out += stream.next_batch()[0]
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batch_size_change_mid_epoch_sees_the_same_samples(num_workers):
    data = torch.utils.data.TensorDataset(torch.arange(250))
    parent = DataStream(data, seed=5, batch_size=32, num_workers=num_workers)
    expected = _indices(parent, 1000)
    child = DataStream(data, seed=5, batch_size=32, num_workers=num_workers)
    seen = _indices(child, 96)  # mid-epoch
    child.set_batch_size(50)
    seen += _indices(child, 1000 - 96)
    assert seen[:1000] == expected
    # batches never cross an epoch boundary; the batch's content is what the indices say
    resumed = DataStream(data, seed=5, batch_size=7, position=240, num_workers=num_workers)
    idx, batch = resumed.next_batch()
    assert idx == expected[240:247] and batch[0].tolist() == idx
    idx, _ = resumed.next_batch()
    assert idx == expected[247:250]


class Record(Hooks):
    def __init__(self) -> None:
        self.indices: list[int] = []
        self.saved: list = []

    def on_step(self, trainer, indices, loss):
        self.indices += indices

    def on_checkpoint(self, trainer):
        t, s = trainer.state()
        self.saved.append(({g: {k: v.clone() for k, v in d.items()} for g, d in t.items()},
                           copy.deepcopy(s)))  # fmt: skip


def test_fork_with_new_batch_size_sees_the_parents_samples():
    task = DigitsMLP()
    parent = Trainer.create(task, HP, seed=0)
    rec = Record()
    parent.train(Budget(steps=10), hooks=rec, checkpoint_every=Every(steps=5))
    tensors, state = rec.saved[0]  # step 5: mid-epoch
    cont = Record()
    parent.train(Budget(steps=40), hooks=cont)
    expected = rec.indices[5 * 64 :] + cont.indices
    child = Trainer.restore(task, tensors, state)
    fork(child, {"batch_size": 100})
    got = Record()
    child.train(Budget(samples=len(expected) - 100 - 5 * 64), hooks=got)
    n = min(len(expected), len(got.indices))
    assert n > 1000 and got.indices[:n] == expected[:n]


def test_fork_changes_only_the_requested_hyperparameters():
    task = DigitsMLP()
    hp = {**HP, "lr_warmup_steps": 5}
    t = Trainer.create(task, hp, seed=0, total_samples=60 * 64)
    t.train(Budget(steps=12))
    before_t, before_s = t.state()
    before_t = {g: {k: v.clone() for k, v in d.items()} for g, d in before_t.items()}
    changed = fork(t, {"lr": 1e-2, "weight_decay": 0.05, "dropout": 0.4, "batch_size": 32,
                       "hidden": 64})  # fmt: skip
    assert set(changed) == {"lr", "weight_decay", "dropout", "batch_size"}  # hidden unchanged
    after_t, after_s = t.state()
    _states_equal(before_t, after_t)  # weights, Adam moments and step counts untouched
    g_before, g_after = before_s["optimizer"]["param_groups"], after_s["optimizer"]["param_groups"]
    for gb, ga in zip(g_before, g_after, strict=True):
        diff = {k for k in gb if gb[k] != ga[k]}
        assert diff <= {"lr", "weight_decay", "initial_lr"}
        assert ga["weight_decay"] == 0.05
    sb, sa = before_s["scheduler"], after_s["scheduler"]
    assert sa["last_epoch"] == sb["last_epoch"] and sa["_step_count"] == sb["_step_count"]
    assert sa["base_lrs"] == [pytest.approx(1e-2)]
    # the schedule keeps its position: the LR is the new base times the same factor
    assert g_after[0]["lr"] == pytest.approx(g_before[0]["lr"] * 1e-2 / 2e-3)
    assert after_s["progress"] == before_s["progress"]
    assert after_s["rng"] == before_s["rng"]
    assert all(m.p == 0.4 for m in t.model.modules() if isinstance(m, torch.nn.Dropout))
    assert t.stream.batch_size == 32


def test_fork_refuses_keys_it_cannot_apply():
    t = Trainer.create(DigitsMLP(), HP, seed=0)
    with pytest.raises(ForkError, match=r"'hidden' cannot be forked.*apply_hparams"):
        fork(t, {"hidden": 128})
    with pytest.raises(ForkError, match=r"'momentum' cannot be forked: .*AdamW has no 'momentum'"):
        fork(t, {"momentum": 0.9})


def test_restore_into_another_shape_names_the_keys():
    task = DigitsMLP()
    t = Trainer.create(task, HP, seed=0)
    tensors, state = t.state()
    state = copy.deepcopy(state)
    state["hparams"]["hidden"] = 32
    with pytest.raises(CheckpointMismatch, match=r"mis-shaped keys: 0\.bias"):
        Trainer.restore(task, tensors, state)


def test_in_place_load_equals_fresh_restore():
    """The fast path (copy a base held in memory into an existing trainer) is exact too."""
    task = DigitsMLP()
    rec = Record()
    t = Trainer.create(task, HP, seed=0)
    t.train(Budget(steps=20), hooks=rec, checkpoint_every=Every(steps=10))
    tensors, state = rec.saved[0]
    a = Trainer.restore(task, {g: {k: v.clone() for k, v in d.items()} for g, d in tensors.items()},
                        state)  # fmt: skip
    a.train(Budget(steps=30))
    b = Trainer.create(task, {**HP, "dropout": 0.5}, seed=9)
    b.train(Budget(steps=3))
    b.load(tensors, state)
    from hpsearch.training.fork import rebuild_model

    rebuild_model(b, state["hparams"])  # what the model keeps outside its tensors: dropout's p
    b.train(Budget(steps=30))
    _states_equal(a.state()[0], b.state()[0])
    assert torch.equal(tensors["model"]["0.weight"], rec.saved[0][0]["model"]["0.weight"])


class TwoGroups(DigitsMLP):
    """nanoGPT-style groups: no weight decay for biases, and a smaller LR for the first layer."""

    def optimizer(self, model, hparams):
        first = [model[0].weight]
        decay = [p for n, p in model.named_parameters() if n.endswith("weight") and n != "0.weight"]
        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
        lr, wd = hparams["lr"], hparams["weight_decay"]
        return torch.optim.AdamW([
            {"params": first, "lr": lr * 0.1, "weight_decay": wd},
            {"params": decay, "weight_decay": wd},
            {"params": no_decay, "weight_decay": 0.0},
        ], lr=lr)  # fmt: skip


def test_fork_keeps_the_tasks_own_group_settings():
    t = Trainer.create(TwoGroups(), HP, seed=0)
    t.train(Budget(steps=3))
    fork(t, {"lr": 4e-3, "weight_decay": 0.05})
    groups = t.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([4e-4, 4e-3, 4e-3])
    assert [g["weight_decay"] for g in groups] == [0.05, 0.05, 0.0]


def test_study_schedule_keeps_group_multipliers():
    from hpsearch.training import Schedule

    t = Trainer.create(TwoGroups(), HP, seed=0, schedule=Schedule("cosine", 0.1, 0.1),
                       total_samples=20 * 64)  # fmt: skip
    t.train(Budget(steps=10))
    lrs = [g["lr"] for g in t.optimizer.param_groups]
    assert lrs[0] == pytest.approx(lrs[1] * 0.1) and lrs[1] < HP["lr"]


class _WithExtra(torch.nn.Module):
    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body, self.extra = body, torch.nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TwoHeads(DigitsMLP):
    """A second head that only some runs train: Adam holds state for it only once it has."""

    def model(self, hparams):
        return _WithExtra(super().model(hparams))

    def loss(self, model, batch):
        x, y = batch
        out = model(x)
        if self.use_extra:
            out = model.extra(out)
        return torch.nn.functional.cross_entropy(out, y)

    use_extra = False


def test_in_place_load_drops_optimizer_state_the_checkpoint_lacks():
    task = TwoHeads()
    rec = Record()
    base = Trainer.create(task, HP, seed=0)
    base.train(Budget(steps=5), hooks=rec, checkpoint_every=Every(steps=5))
    tensors, state = rec.saved[0]
    worker = Trainer.create(task, HP, seed=1)
    task.use_extra = True  # the previous trial trained the extra head too
    worker.train(Budget(steps=3))
    task.use_extra = False
    # (one after the other: both draw their dropout masks from the global RNG they restore)
    fresh = Trainer.restore(
        task, {g: {k: v.clone() for k, v in d.items()} for g, d in tensors.items()}, state
    )
    expected_keys = fresh.state()[0]["optimizer"].keys()
    fresh.train(Budget(steps=10))
    worker.load(tensors, state)
    assert worker.state()[0]["optimizer"].keys() == expected_keys
    worker.train(Budget(steps=10))
    _states_equal(worker.state()[0], fresh.state()[0])


class _StopAt(Hooks):
    """Raises after step `n`, like the study's stop flag after a Ctrl-C (checked after a step,
    so a step that crossed an evaluation boundary is saved before it is evaluated)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_step(self, trainer, indices, loss):
        if trainer.progress.step == self.n:
            raise KeyboardInterrupt


def test_a_stop_between_a_step_and_its_evaluation_evaluates_on_resume(tmp_path):
    ref = Trainer.create(DigitsMLP(), HP, seed=3)
    ref.train(Budget(steps=12), eval_every=Every(steps=5))
    stopped = Trainer.create(DigitsMLP(), HP, seed=3)
    with pytest.raises(KeyboardInterrupt):
        stopped.train(Budget(steps=12), hooks=_StopAt(10), eval_every=Every(steps=5))
    assert [h["step"] for h in stopped.history] == [5]  # step 10 was never evaluated
    store = open_store(str(tmp_path / "ck"))
    loaded = store.load(store.save(*stopped.state()).id)
    resumed = Trainer.restore(DigitsMLP(), loaded.tensors, loaded.state)
    resumed.train(Budget(steps=12), eval_every=Every(steps=5))
    assert resumed.history == ref.history
    _states_equal(resumed.state()[0], ref.state()[0])


def test_the_example_reads_the_digits_scikit_learn_loads():
    """examples/digits.py reads scikit-learn's bundled CSV itself (importing sklearn.datasets is
    1.7 s of every process's start-up): the images and labels are load_digits()'s."""
    from digits import digits_tensors
    from sklearn.datasets import load_digits

    x, y = digits_tensors()
    data = load_digits()
    assert torch.equal(x, torch.tensor(data.data, dtype=torch.float32) / 16.0)
    assert torch.equal(y, torch.tensor(data.target, dtype=torch.long))
