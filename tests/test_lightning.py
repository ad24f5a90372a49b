"""LightningTask: a LightningModule and its DataModule, unchanged, through hpsearch's loop: every
form of configure_optimizers, validation metrics (torchmetrics objects too) reduced as Lightning's
own Trainer reduces them, a study of a module holding torchmetrics metrics that runs with
`hpsearch run` and passes `hpsearch check-resume`, and the Lightning zoo (tests/zoo_lightning.py):
metrics, non-persistent buffers, EMA weights and the training hooks, each resumed in a fresh
process and forked bit for bit."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

L = pytest.importorskip("lightning.pytorch")  # the `lightning` extra; imported once, it is slow

import torch  # noqa: E402
import torchmetrics  # noqa: E402
from lightning_digits import DigitsData, DigitsModule  # noqa: E402  (examples/, see conftest)
from torch.utils.data import DataLoader  # noqa: E402

import hpsearch  # noqa: E402
import zoo_lightning as zl  # noqa: E402
from hpsearch.checkpoint import open_store  # noqa: E402
from hpsearch.cli import main  # noqa: E402
from hpsearch.errors import TaskError  # noqa: E402
from hpsearch.integrations.lightning import LightningScheduler, LightningTask  # noqa: E402
from hpsearch.search.records import TrialRecord  # noqa: E402
from hpsearch.search.selfcheck import first_difference  # noqa: E402
from hpsearch.search.session import Session  # noqa: E402
from hpsearch.training import fork  # noqa: E402
from studyutil import ROOT, write_study  # noqa: E402


class _Returns(DigitsModule):
    """A DigitsModule whose configure_optimizers returns what the test puts in `make`."""

    make = staticmethod(lambda opt, sched: opt)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return type(self).make(opt, torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))


class SmallTask(LightningTask):
    module = _Returns
    datamodule = functools.partial(DigitsData, n_train=256)  # 4 steps an epoch at 64


def _built(make):  # type: ignore[no-untyped-def]
    _Returns.make = staticmethod(make)
    task = SmallTask()
    task.datasets()
    model = task.model({"lr": 0.1, "batch_size": 64, "hidden": 8})
    opt = task.optimizer(model, {})
    return opt, task.scheduler(opt, {"batch_size": 64}, 100)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # no training here
@pytest.mark.parametrize(
    ("form", "period"),
    [
        (lambda o, s: o, None),
        (lambda o, s: [o], None),
        (lambda o, s: {"optimizer": o}, None),
        (lambda o, s: ([o], [s]), 4),  # a bare scheduler steps per epoch, as in Lightning
        (lambda o, s: {"optimizer": o, "lr_scheduler": s}, 4),
        (lambda o, s: {"optimizer": o, "lr_scheduler": {"scheduler": s, "interval": "step"}}, 1),
        (lambda o, s: {"optimizer": o,
                       "lr_scheduler": {"scheduler": s, "interval": "step", "frequency": 3}}, 3),
        (lambda o, s: ([o], [{"scheduler": s, "interval": "epoch", "frequency": 2}]), 8),
    ],
)  # fmt: skip
def test_every_single_optimizer_form_of_configure_optimizers(form, period) -> None:  # type: ignore[no-untyped-def]
    opt, sched = _built(form)
    assert isinstance(opt, torch.optim.SGD)
    if period is None:
        assert sched is None
        return
    for _ in range(9):  # hpsearch steps a task's scheduler once per optimizer step
        sched.step()
    inner = sched.scheduler if isinstance(sched, LightningScheduler) else sched
    assert inner.last_epoch == 9 // period
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** (9 // period))


def test_what_one_optimizer_cannot_express_is_refused() -> None:
    two = lambda o, s: [o, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)]  # noqa: E731
    with pytest.raises(TaskError, match="one optimizer"):
        _built(two)
    with pytest.raises(TaskError, match="interval must be"):
        _built(lambda o, s: {"optimizer": o, "lr_scheduler": {"scheduler": s, "interval": "x"}})


class _Logs(L.LightningModule):
    """Logs by every reduction Lightning has, a value whose batch size is given, and torchmetrics
    metric objects (one alone, a MetricCollection with log_dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(64, 10)
        self.acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.more = torchmetrics.MetricCollection(
            {"f1": torchmetrics.F1Score(task="multiclass", num_classes=10, average="macro"),
             "mean_x": torchmetrics.MeanMetric()}
        )  # fmt: skip

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        logits = self.w(x)
        per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        self.log("val_loss", per.mean())  # weighted by the inferred batch size
        self.log("loss_max", per.max(), reduce_fx="max")
        self.log("loss_sum", per.sum(), reduce_fx=torch.sum)
        self.log_dict({"first": x[0, 10], "small": x[:3, 20].mean()}, batch_size=3)
        self.log("both", per.mean(), on_step=True, on_epoch=True)
        self.acc(logits, y)
        self.log("acc", self.acc)
        self.more["f1"].update(logits, y)
        self.more["mean_x"].update(x[:, 30])
        self.log_dict(self.more)

    def on_validation_epoch_end(self) -> None:
        self.log("at_end", torch.tensor(7.0))


def test_validation_metrics_are_reduced_as_lightnings_trainer_reduces_them() -> None:
    dm = DigitsData()
    dm.setup("fit")
    loader = DataLoader(dm.val, batch_size=128)  # 128, 128, 104: the weights matter
    model = _Logs()
    ours = LightningTask.evaluate(SmallTask(), model, loader)
    assert model.acc.update_count == 0  # computed, then reset, as Lightning does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging
        trainer = L.Trainer(
            logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, accelerator="cpu", devices=1,
        )  # fmt: skip
        (theirs,) = trainer.validate(model, dataloaders=loader, verbose=False)
    assert set(ours) == set(theirs) == {
        "val_loss", "loss_max", "loss_sum", "first", "small", "both_epoch", "at_end", "acc",
        "f1", "mean_x",
    }  # fmt: skip
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-6), key
    assert "log" not in model.__dict__  # the module gets its own self.log back


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("lightning")
    task = tmp / "task.py"  # the task file a Lightning user adds beside their own code
    task.write_text(
        textwrap.dedent(f"""
        import functools, sys
        sys.path.insert(0, {os.path.join(ROOT, "examples")!r})
        from lightning_digits import DigitsData, DigitsModule
        from hpsearch.integrations.lightning import LightningTask

        class DigitsTask(LightningTask):
            module = DigitsModule
            datamodule = functools.partial(DigitsData, n_train=256)
    """)
    )
    path = write_study(
        tmp, "lightning", task=f"{task}:DigitsTask",
        checkpoints={"every": 1.0, "keep_best": 3},
        warmup={"epochs": 2, "hparams": {"lr": 1e-2, "batch_size": 64, "hidden": 32,
                                             "dropout": 0.1}},
        trials={"n": 3, "epochs": 2, "eval_every": 1.0},
        search_space={"lr": {"float": [1e-3, 3e-2], "log": True},
                      "dropout": {"float": [0.0, 0.3]}},
        sampler={"name": "RandomSampler"}, pruner=None,
    )  # fmt: skip
    assert main(["run", path]) == 0
    return path


def test_a_lightning_study_runs_and_steps_its_scheduler_per_epoch(study) -> None:  # type: ignore[no-untyped-def]
    s = Session.open(study, create=False)
    try:
        trials = s.study.get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3
        assert all(0.5 < t.value <= 1.0 for t in trials)
        ckpt = TrialRecord.of(s.study.best_trial).final_checkpoint
        state = s.store.load(ckpt, groups=()).state
    finally:
        s.close()
    sched = state["scheduler"]  # 2 warm-up + 2 trial epochs of 4 steps: StepLR stepped 4 times
    assert (sched["calls"], sched["period"], sched["scheduler"]["last_epoch"]) == (16, 4, 4)
    with hpsearch.load(study) as loaded:
        model = loaded.best_model()
        assert isinstance(model, DigitsModule) and not model.training
        dm = DigitsData()
        dm.setup("fit")
        metrics = SmallTask().evaluate(model, DataLoader(dm.val, batch_size=128))
        assert metrics["val_accuracy"] == pytest.approx(loaded.best().value)


def test_a_lightning_study_resumes_exactly(study, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["check-resume", study, "--steps", "3"]) == 0  # crosses an epoch after the save
    assert capsys.readouterr().out.startswith("exact:")


# -- the Lightning zoo (tests/zoo_lightning.py): each pattern resumes and forks bit for bit ------


@pytest.fixture(scope="module")
def lightning_zoo(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Every entry's uninterrupted run and fork here, its resumed run and fork in one fresh
    process."""
    tmp = tmp_path_factory.mktemp("lightning-zoo")
    store = open_store(str(tmp / "ckpt"))
    runs: dict[str, dict] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, (_, k) in zl.ENTRIES.items():
            trainer = zl.create(name)
            zl.train(trainer, k)
            ckpt = store.save(*trainer.state()).id
            losses = zl.train(trainer, 2 * k)
            expected = trainer.state()  # now: its RNG state goes on with the fork's run
            forked = zl.create(name)
            zl.train(forked, k)
            fork(forked, zl.FORK)
            fork_losses = zl.train(forked, 2 * k)
            runs[name] = {"ckpt": ckpt, "expected": expected, "losses": losses,
                          "fork_expected": forked.state(), "fork_losses": fork_losses}  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    jobs, out = tmp / "jobs.json", tmp / "out.json"
    jobs.write_text(json.dumps({n: r["ckpt"] for n, r in runs.items()}))
    child = [sys.executable, os.path.join(ROOT, "tests", "zoo_lightning.py"), store.url,
             str(jobs), str(out)]  # fmt: skip
    proc = subprocess.run(child, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name, got in json.loads(out.read_text()).items():
        runs[name]["child"] = got
    return store, runs


@pytest.mark.parametrize("name", ["torchmetrics-mid-epoch", "torchmetrics-at-epoch-end",
                                  "nonpersistent-buffers", "ema-averaged-model",
                                  "ema-own-optimizer-step-and-hooks"])  # fmt: skip
def test_a_lightning_pattern_resumes_and_forks_exactly(name, lightning_zoo) -> None:  # type: ignore[no-untyped-def]
    store, runs = lightning_zoo
    run = runs[name]
    got = run["child"]
    assert "error" not in got, f"in the fresh process: {got['error']}\n{got['traceback']}"
    resumed = store.load(got["resume"])
    diff = first_difference(run["expected"], (resumed.tensors, resumed.state))
    assert diff is None, f"the resumed run differs from the uninterrupted one first at {diff}"
    assert got["losses"] == run["losses"]
    forked = store.load(got["fork"])
    diff = first_difference(run["fork_expected"], (forked.tensors, forked.state))
    assert diff is None, f"the fork of the restored state differs first at {diff}"
    assert got["fork_losses"] == run["fork_losses"]


def test_the_zoo_runs_lightnings_hooks_and_resets(lightning_zoo) -> None:  # type: ignore[no-untyped-def]
    """What the bitwise checks rest on: the hooks ran, in Lightning's counts, and the metrics
    hold state worth restoring."""
    _, runs = lightning_zoo
    # 12 steps of 8 on 24 samples: epochs start at steps 0, 3, 6, 9 and the first three end
    # before the next one's first batch; one zero_grad, pre-step and batch end per step
    tensors, state = runs["ema-own-optimizer-step-and-hooks"]["expected"]
    assert tensors["model"]["calls"].tolist() == [4, 3, 12, 12, 12]
    ema, weight = tensors["model"]["ema_0_weight"], tensors["model"]["net.0.weight"]
    assert not torch.equal(ema, weight)
    tensors, _ = runs["ema-averaged-model"]["expected"]  # averaged after each of the 14 steps
    assert int(tensors["model"]["ema.n_averaged"]) == 14
    # Lightning resets a metric logged in training_step at each epoch's end: at step 14 the
    # accuracy has seen the 2 batches of its epoch (at 12, the 3 of an epoch not yet ended)
    for name, seen in (("torchmetrics-mid-epoch", 2), ("torchmetrics-at-epoch-end", 3)):
        tensors, state = runs[name]["expected"]
        metrics = state["task_state"]["metrics"]
        assert metrics["train_acc"]["updates"] == seen, name
        assert metrics["loss_mean"]["updates"] == 2 * ENTRY_K[name]  # never reset
        assert metrics["val_metrics.val_acc"]["updates"] == 0  # reset after each evaluation
        history = state["metrics"]
        assert {"val_acc", "val_f1", "train_acc_so_far", "train_auroc_so_far"} <= set(history[-1])
    _, state = runs["nonpersistent-buffers"]["expected"]
    assert state["task_state"]["buffers"]["seen"]["__tensor__"]


ENTRY_K = {"torchmetrics-mid-epoch": 7, "torchmetrics-at-epoch-end": 6}
