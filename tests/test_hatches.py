"""The loop's escape hatches (the `training:` section, `Task.training_step`, `Task.state_dict`):
their study-file errors, what they do to the loop, and exact resume where the zoo does not look
(a run cut inside an accumulation group, check-resume on a study that uses them all). Each
hatch's resume-and-fork conformance is in the zoo (tests/zoo_hatches.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hpsearch.config import TrainingSettings, load_study_file
from hpsearch.errors import CheckpointMismatch, ForkError, StudyFileError, TaskError
from hpsearch.search import selfcheck
from hpsearch.search.selfcheck import first_difference
from hpsearch.search.session import fingerprint
from hpsearch.training import Budget, Every, Hooks, Schedule, Trainer, fork

HP = {"lr": 1e-2, "batch_size": 4, "dropout": 0.1}

# One self-contained task, used here and (as a file) by check-resume's fresh process: a loss
# weight read from hparams at every step, and an EMA of the weights kept on the task.
TASK_SOURCE = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

import hpsearch


class Base(hpsearch.Task):
    forkable_hparams = ("aux_weight",)

    def __init__(self):
        self.seen = []  # (aux_weight, batch length) of every training_step call, for the tests

    def datasets(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
        return TensorDataset(x, y), TensorDataset(x[:8], y[:8])

    def model(self, hparams):
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(hparams["dropout"]),
                             nn.Linear(8, 3))

    def optimizer(self, model, hparams):
        return torch.optim.AdamW(model.parameters(), lr=hparams["lr"])

    def training_step(self, model, batch, hparams):
        x, y = batch
        weight = float(hparams.get("aux_weight", 0.0))
        self.seen.append((weight, len(y)))
        logits = model(x).float()
        return nn.functional.cross_entropy(logits, y) + weight * logits.pow(2).mean()

    def evaluate(self, model, loader):
        x, y = next(iter(loader))
        return {"val_loss": float(nn.functional.cross_entropy(model(x).float(), y))}


class Tiny(Base):
    def __init__(self):
        super().__init__()
        self.ema = None

    def training_step(self, model, batch, hparams):
        with torch.no_grad():
            if self.ema is None:
                self.ema = [p.detach().clone() for p in model.parameters()]
            for e, p in zip(self.ema, model.parameters()):
                e.lerp_(p, 0.5)
        return super().training_step(model, batch, hparams)

    def state_dict(self):
        return {"ema": self.ema}

    def load_state_dict(self, state):
        self.ema = state["ema"]
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny ops: more threads only spin, and on a loaded machine they crawl (as in the zoo)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task_classes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("task") / "tiny.py"
    path.write_text(TASK_SOURCE)
    namespace: dict[str, Any] = {}
    exec(compile(TASK_SOURCE, str(path), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def tiny(task_classes: dict[str, Any]) -> Any:
    return task_classes["Tiny"]


@pytest.fixture(scope="module")
def stateless(task_classes: dict[str, Any]) -> Any:
    return task_classes["Base"]


def _study(tmp: Path, training: Any, **extra: Any) -> str:
    doc = {
        "name": "hatches",
        "task": "tiny.py:Tiny",
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "warmup": {"steps": 4, "hparams": dict(HP)},
        "trials": {"n": 2, "steps": 4},
        "search_space": {"lr": {"float": [1e-3, 1e-1], "log": True}},
        "training": training,
        **extra,
    }
    (tmp / "tiny.py").write_text(TASK_SOURCE)
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


# ---------------------------------------------------------------------------------------------
# the study file


def test_the_training_section_is_read_and_defaults_to_the_plain_loop(tmp_path: Path) -> None:
    s = load_study_file(_study(tmp_path, {"clip_norm": 1, "accumulate_samples": 8,
                                          "precision": "bf16"}))  # fmt: skip
    assert s.training == TrainingSettings(1.0, None, 8, "bf16")
    doc = yaml.safe_load(Path(_study(tmp_path, None)).read_text())
    del doc["training"]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(doc))
    assert load_study_file(tmp_path / "study.yaml").training == TrainingSettings()


def test_the_fingerprint_holds_the_training_settings_a_study_sets(tmp_path: Path) -> None:
    """The base checkpoint depends on them: a study may not change them under its trials. A
    study without them keeps the fingerprint it had before they existed."""
    hatched = fingerprint(load_study_file(_study(tmp_path, {"clip_norm": 2, "precision": "bf16"})))
    assert {k: v for k, v in hatched.items() if k.startswith("training.")} == {
        "training.clip_norm": 2.0,
        "training.precision": "bf16",
    }
    plain = fingerprint(load_study_file(_study(tmp_path, None)))
    assert not any(k.startswith("training") for k in plain)


@pytest.mark.parametrize(
    ("training", "extra", "message"),
    [
        (
            {"clip_norm": 1.0, "clip_value": 0.5},
            {},
            "training: give either clip_norm or clip_value, not both (got clip_norm=1.0, "
            "clip_value=0.5)",
        ),
        (
            {"clip_value": 0},
            {},
            "training.clip_value: must be > 0, got 0; e.g. training: {clip_value: 1.0}",
        ),
        (
            {"accumulate_samples": 10},
            {},
            "training.accumulate_samples: must be a multiple of warmup.hparams.batch_size (4) so "
            "that every optimizer step sees whole micro-batches, got 10; use e.g. 8",
        ),
        (
            {"accumulate_samples": 16},
            {"search_space": {"batch_size": {"categorical": [4, 8, 6]}}},
            "training.accumulate_samples: must be a multiple of every batch size "
            "search_space.batch_size can sample (a fork to 6 could not keep 16 samples per "
            "optimizer step), got 16; list the batch sizes that divide it, e.g. batch_size: "
            "{categorical: [2, 4, 8, 16]}",
        ),
        (
            {"accumulate_samples": 16},
            {"search_space": {"batch_size": {"int": [4, 16], "step": 2}}},
            "training.accumulate_samples: must be a multiple of every batch size "
            "search_space.batch_size can sample (a fork to 6 could not keep 16 samples per "
            "optimizer step), got 16; list the batch sizes that divide it, e.g. batch_size: "
            "{categorical: [2, 4, 8, 16]}",
        ),
        (
            {"precision": "bfloat16"},
            {},
            "training.precision: must be one of fp32, bf16, fp16, got 'bfloat16'; did you mean "
            "'bf16'?",
        ),
        (
            {"clip": 1.0},
            {},
            "training.clip: unknown key; did you mean 'clip_norm'? (allowed here: clip_norm, "
            "clip_value, accumulate_samples, precision)",
        ),
    ],
)
def test_study_file_errors(tmp_path: Path, training: Any, extra: Any, message: str) -> None:
    path = _study(tmp_path, training, **extra)
    with pytest.raises(StudyFileError) as info:
        load_study_file(path)
    assert str(info.value) == f"{path}: {message}"


# ---------------------------------------------------------------------------------------------
# the loop


class Record(Hooks):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int, float, int]] = []

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        p = trainer.progress
        self.steps.append((p.step, p.samples, trainer.optimizer.param_groups[0]["lr"],
                           len(indices)))  # fmt: skip


def test_accumulation_steps_per_group_and_the_schedule_counts_samples(tiny: Any) -> None:
    training = TrainingSettings(accumulate_samples=12)
    t = Trainer.create(tiny(), HP, seed=1, schedule=Schedule("cosine", 0.25, 0.1),
                       total_samples=120, training=training)  # fmt: skip
    rec = Record()
    t.train(Budget(steps=4), hooks=rec)
    # one optimizer step per 3 micro-batches of 4; the LR is set once per step, from the samples
    assert [(s, n, k) for s, n, _, k in rec.steps] == [(i, 12 * i, 12) for i in range(1, 5)]
    assert [lr for _, _, lr, _ in rec.steps] == [
        pytest.approx(1e-2 * Schedule("cosine", 0.25, 0.1).factor(12 * i / 120)) for i in range(4)
    ]
    assert [n for _, n in t.task.seen] == [4] * 12
    # a task scheduler is sized in optimizer steps: 120 samples at 12 a step
    sized: list[int] = []

    class Sized(tiny):  # type: ignore[misc, valid-type]
        def scheduler(self, optimizer: Any, hparams: Any, total_steps: int) -> Any:
            sized.append(total_steps)

    Trainer.create(Sized(), HP, seed=1, total_samples=120, training=training)
    assert sized == [10]


def test_a_run_cut_inside_an_accumulation_group_resumes_exactly(tiny: Any) -> None:
    """Killed in the middle of a group (the task raises on the 2nd of 3 micro-batches of the
    4th step), the run resumes from its checkpoint at a group's end and takes the group again."""
    training = TrainingSettings(accumulate_samples=12, clip_norm=0.5, precision="bf16")
    ref = Trainer.create(tiny(), HP, seed=2, training=training)
    ref.train(Budget(steps=6))

    class Killed(Exception):
        pass

    class DiesMidGroup(tiny):  # type: ignore[misc, valid-type]
        def training_step(self, model: Any, batch: Any, hparams: Any) -> torch.Tensor:
            if len(self.seen) == 3 * 3 + 1:
                raise Killed
            return super().training_step(model, batch, hparams)

    saved: list[Any] = []

    class Save(Hooks):
        def on_checkpoint(self, trainer: Trainer) -> None:
            tensors, state = trainer.state()
            saved.append(({g: {k: v.clone() for k, v in d.items()} for g, d in tensors.items()},
                          state))  # fmt: skip

    cut = Trainer.create(DiesMidGroup(), HP, seed=2, training=training)
    with pytest.raises(Killed):
        cut.train(Budget(steps=6), hooks=Save(), checkpoint_every=Every(steps=3))
    assert cut.stream.position == 4 * 12  # it died with the group's batches drawn
    tensors, state = saved[-1]
    assert state["progress"]["samples"] == 36 and state["progress"]["step"] == 3
    resumed = Trainer.restore(tiny(), tensors, state)
    resumed.train(Budget(steps=6))
    assert first_difference(ref.state(), resumed.state()) is None


def test_training_step_sees_the_forked_hparams_and_task_state_is_carried(tiny: Any) -> None:
    t = Trainer.create(tiny(), {**HP, "aux_weight": 0.1}, seed=3)
    t.train(Budget(steps=2))
    tensors, state = t.state()
    child = Trainer.restore(tiny(), {g: {k: v.clone() for k, v in d.items()}
                                     for g, d in tensors.items()}, state)  # fmt: skip
    ema = zip(child.task.ema, t.task.ema, strict=True)
    assert [torch.equal(a, b) for a, b in ema] == [True] * 4
    assert fork(child, {"aux_weight": 0.7}) == {"aux_weight": 0.7}  # no apply_hparams needed
    child.train(Budget(steps=4))
    assert [w for w, _ in child.task.seen] == [0.7, 0.7]
    assert child.state()[1]["hparams"]["aux_weight"] == 0.7
    with pytest.raises(ForkError, match="'hidden' cannot be forked"):
        fork(child, {"hidden": 3})  # not listed in forkable_hparams


def test_a_batch_size_fork_must_keep_whole_micro_batches(tiny: Any) -> None:
    t = Trainer.create(tiny(), HP, seed=4, training=TrainingSettings(accumulate_samples=8))
    with pytest.raises(ForkError) as info:
        fork(t, {"batch_size": 3})
    assert str(info.value) == (
        "batch_size 3 does not divide training.accumulate_samples (8): an optimizer step must "
        "take whole micro-batches; fork to a batch size that divides it (e.g. one of 1, 2, 4, 8)"
    )
    assert t.stream.batch_size == 4 and t.hparams["batch_size"] == 4  # nothing changed
    fork(t, {"batch_size": 2})
    assert t.train(Budget(steps=1)) and t.progress.samples == 8


def test_task_state_errors_are_named(tiny: Any, stateless: Any) -> None:
    t = Trainer.create(tiny(), HP, seed=5)
    t.train(Budget(steps=1))
    tensors, state = t.state()
    with pytest.raises(CheckpointMismatch, match="keeps state of its own"):
        Trainer.restore(tiny(), tensors, {**state, "task_state": None})

    with pytest.raises(CheckpointMismatch, match=r"does not define Task\.state_dict"):
        Trainer.restore(stateless(), tensors, state)
    t.task.ema = {"set": {1, 2}}
    with pytest.raises(TaskError, match="a value of type set cannot be saved as JSON"):
        t.state()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.eye(3).to_sparse(), "task state ema: a torch.sparse_coo tensor cannot be saved; "
                                   "call .to_dense()"),
        ([torch.zeros(2), torch.empty(3, device="meta")], "task state ema.1: a meta tensor holds "
                                                           "no data to save"),
    ],
)  # fmt: skip
def test_task_state_no_checkpoint_can_hold_is_refused_by_name(
    tiny: Any, bad: Any, message: str
) -> None:
    t = Trainer.create(tiny(), HP, seed=5)
    t.task.ema = bad
    with pytest.raises(TaskError) as info:
        t.state()
    assert message in str(info.value)


def test_task_state_nested_too_deep_is_refused_not_a_recursion_error(tiny: Any) -> None:
    t = Trainer.create(tiny(), HP, seed=5)
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    t.task.ema = deep
    with pytest.raises(TaskError, match="nested more than 100 levels deep"):
        t.state()
    t.task.ema = {"config": deep}  # in a JSON leaf too
    with pytest.raises(TaskError, match="nested more than 100 levels deep"):
        t.state()


def test_a_users_value_shaped_like_a_marker_is_read_back_as_it_was(tiny: Any) -> None:
    t = Trainer.create(tiny(), HP, seed=7)
    t.train(Budget(steps=1))
    mine = [{"__tensor__": "ema.0"}, {"__escaped__": {"a": 1}},
            {"__items__": [[1, 2]], "__type__": "counter"}]  # fmt: skip
    t.task.ema = [*t.task.ema, *mine]
    tensors, state = t.state()
    state = json.loads(json.dumps(state))  # as the checkpoint holds it
    child = Trainer.restore(tiny(), tensors, state)
    assert child.task.ema[4:] == mine
    assert [type(e) for e in child.task.ema[:4]] == [torch.Tensor] * 4


def test_json_helpers_keep_a_users_marker_shaped_dict() -> None:
    from collections import Counter

    from hpsearch.training.state import (
        from_json,
        load_optimizer_state,
        optimizer_state,
        to_json,
    )

    value = {"a": {"__tensor__": "x"}, "b": {"__items__": [[1, 2]], "__type__": "counter"},
             "c": Counter({3: 1}), "d": {"__escaped__": 4}}  # fmt: skip
    back = from_json(json.loads(json.dumps(to_json(value, "scheduler state"))))
    assert back == value and type(back["b"]) is dict and type(back["c"]) is Counter

    def sgd(note: Any) -> torch.optim.Optimizer:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
        opt.param_groups[0]["note"] = note  # a param group may carry a user's own keys
        return opt

    tensors, meta = optimizer_state(sgd({"__tensor__": "group.0.lr"}))
    fresh = sgd(None)
    load_optimizer_state(fresh, tensors, json.loads(json.dumps(meta)))
    assert fresh.param_groups[0]["note"] == {"__tensor__": "group.0.lr"}


def test_a_plain_run_saves_what_it_always_did(stateless: Any) -> None:
    tensors, state = Trainer.create(stateless(), HP, seed=6).state()
    assert set(tensors) == {"model", "optimizer"} and state["version"] == 1
    assert state["task_state"] is None and state["scaler"] is None


# ---------------------------------------------------------------------------------------------
# check-resume


def test_check_resume_builds_the_run_with_the_hatches_and_names_them(tmp_path: Path) -> None:
    """What check-resume adds for the hatches, in this process: the run it checks is built with
    the study's `training:` settings, its report names every hatch, and a difference in the
    task's state or the GradScaler's is named. (Its fresh process restores the hatches from the
    checkpoint as every restore does: the zoo's fresh process checks that, hatch by hatch.)"""
    path = _study(tmp_path, {"clip_norm": 0.5, "accumulate_samples": 8, "precision": "fp16"})
    trainer = selfcheck._trainer(path)
    assert trainer.training == load_study_file(path).training
    trainer.train(Budget(steps=2))
    assert selfcheck.hatches_in_use(trainer) == [
        "gradients clipped to norm 0.5",
        "8 samples per optimizer step (2 micro-batches)",
        "fp16 autocast with the GradScaler's state",
        "Task.training_step",
        "the task's own state (Task.state_dict: 4 tensors and its JSON)",
    ]
    saved = trainer.state()
    tensors = {g: {k: v.clone() for k, v in d.items()} for g, d in saved[0].items()}
    same = (tensors, json.loads(json.dumps(saved[1])))
    assert first_difference(saved, same) is None
    kept = tensors["task"]["ema.2"]
    tensors["task"]["ema.2"] = kept + 1
    assert first_difference(saved, same) == "task.ema.2"
    assert "Task.state_dict does not return all" in selfcheck.likely_cause("task.ema.2")
    tensors["task"]["ema.2"] = kept
    same[1]["scaler"]["_growth_tracker"] += 1
    assert first_difference(saved, same) == "scaler"
