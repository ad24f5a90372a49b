"""A fork reaches everything that holds its keys, and a node's training is a function of its
recipe alone (issue 26); a key a fork cannot change is refused at load, whatever route the task
takes (issue 22).

- every place torch, Hugging Face and users keep a dropout is the child's after a fork;
- the load check: a dropout only an attention holds is forkable, one the task keeps outside its
  model is refused (unless `apply_hparams` sets it), and so is a key whose `apply_hparams` raises
  or that changes the weights;
- the same node after different predecessors (a reused trainer, a base held in memory, a fresh
  process) trains bit for bit the same;
- a char-level transformer tree that forks `dropout` with the `wsd` schedule replays bit for bit,
  and so does a tree whose roots sample a loss's `label_smoothing`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from optuna.trial import TrialState
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import hpsearch
from hpsearch.cli import main
from hpsearch.config import load_study_file, warmup_hparams
from hpsearch.errors import StudyFileError
from hpsearch.search.records import trial_attr
from hpsearch.search.replay import replay
from hpsearch.search.restore import Restorer
from hpsearch.search.selfcheck import first_difference
from hpsearch.search.session import Session
from hpsearch.testing.conformance.scheduler import close_context, run_context
from hpsearch.training import Budget, Trainer, fork
from hpsearch.training.forkcheck import check_forkable
from hpsearch.training.holdings import differences, holdings
from studyutil import write_study

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = os.path.join(HERE, "family_tasks.py")

# -- where a dropout hides ------------------------------------------------------------------


class Scaled(nn.Module):
    """Attention through `F.scaled_dot_product_attention`, its dropout a float of the module."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.dropout_p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        p = self.dropout_p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p)


def _gpt2(p: float) -> nn.Module:
    pytest.importorskip("transformers")
    import gpt2

    return gpt2.TinyGPT2().model({"dropout": p, "n_embd": 16, "n_layer": 1})


def _llama(p: float) -> nn.Module:
    """A Hugging Face model that keeps its attention dropout as a float (`attention_dropout`),
    with no Dropout module at all, and a non-persistent buffer (the rotary frequencies)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
        attention_dropout=p,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


HOLDERS: dict[str, tuple[Callable[[float], nn.Module], float]] = {  # a model, the child's p
    "torch.nn.Dropout": (lambda p: nn.Sequential(nn.Linear(8, 8), nn.Dropout(p)), 0.3),
    "MultiheadAttention.dropout": (lambda p: nn.MultiheadAttention(8, 2, dropout=p), 0.3),
    "RNN.dropout": (lambda p: nn.RNN(8, 8, num_layers=2, dropout=p), 0.3),
    "LSTM.dropout": (lambda p: nn.LSTM(8, 8, num_layers=2, dropout=p), 0.3),
    "GRU.dropout": (lambda p: nn.GRU(8, 8, num_layers=2, dropout=p), 0.3),
    "TransformerEncoderLayer": (lambda p: nn.TransformerEncoderLayer(8, 2, 16, p), 0.3),
    "TransformerDecoderLayer": (lambda p: nn.TransformerDecoderLayer(8, 2, 16, p), 0.3),
    "Transformer": (lambda p: nn.Transformer(8, 2, 1, 1, 16, p), 0.3),
    "a float for scaled_dot_product_attention": (Scaled, 0.3),
    "Identity when p is 0": (
        lambda p: nn.Sequential(nn.Linear(8, 8), nn.Dropout(p) if p else nn.Identity()),
        0.0,
    ),
    "Hugging Face GPT-2": (_gpt2, 0.3),
    "Hugging Face Llama attention_dropout": (_llama, 0.3),
}


class HolderTask(hpsearch.Task):
    """Builds one holder; nothing here trains it (the fork matrix in tests/test_zoo.py does)."""

    def __init__(self, build: Callable[[float], nn.Module]) -> None:
        self.build = build

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        x = torch.zeros(8, 8)
        return TensorDataset(x, x), TensorDataset(x, x)

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        return self.build(float(hparams["dropout"]))

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=float(hparams["lr"]))


@pytest.mark.parametrize("holder", list(HOLDERS))
def test_every_place_a_dropout_hides_is_the_childs_after_a_fork(holder: str) -> None:
    build, child = HOLDERS[holder]
    task = HolderTask(build)
    trainer = Trainer.create(task, {"lr": 1e-3, "batch_size": 4, "dropout": 0.1}, seed=0)
    weights = {n: t.clone() for n, t in trainer.model.state_dict().items()}
    parent = holdings({"model": build(0.1)}, private=False)
    fork(trainer, {"dropout": child})
    want = holdings({"model": build(child)}, private=False)
    assert differences(parent, want), "the holder holds no dropout: the test would prove nothing"
    # (private attributes aside: Hugging Face marks the modules it initialised for real)
    assert differences(holdings({"model": trainer.model}, private=False), want) == []
    # the weights are the parent's, and the optimizer still trains the model's own parameters
    assert all(torch.equal(weights[n], t) for n, t in trainer.model.state_dict().items())
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in trainer.model.parameters()}


# -- the load check ---------------------------------------------------------------------------

SMALL = {"lr": 1e-2, "dropout": 0.1, "batch_size": 64, "weight_decay": 0.0, "hidden": 16}


def _base_study(tmp_path: Path, cls: str, space: dict[str, Any], **hparams: Any) -> str:
    return write_study(
        tmp_path, name=cls.lower(), task=f"{TASKS}:{cls}", search_space=space,
        objective={"metric": "val_loss", "direction": "minimize"},
        warmup={"epochs": 0.25, "hparams": {**SMALL, **hparams}},
        trials={"n": 2, "epochs": 0.25, "eval_every": 0.25},
    )  # fmt: skip


DROPOUT = {"dropout": {"float": [0.0, 0.5]}}


def test_a_dropout_that_only_an_attention_holds_is_forkable(tmp_path: Path) -> None:
    """Before, a model without a torch.nn.Dropout module was refused, and had it been accepted
    its fork would have changed nothing: the attention keeps its dropout as a float."""
    check_forkable(load_study_file(_base_study(tmp_path, "AttentionDigits", DROPOUT)),
                   _task("AttentionDigits"))  # fmt: skip


def test_a_dropout_the_task_keeps_outside_its_model_is_refused_unless_it_applies_it(
    tmp_path: Path,
) -> None:
    path = _base_study(tmp_path, "DropoutOnTask", DROPOUT)
    with pytest.raises(StudyFileError) as err:
        check_forkable(load_study_file(path), _task("DropoutOnTask"))
    assert str(err.value).startswith(
        f"{path}: search_space.dropout: a fork to dropout=0.0 does not reach everything that "
        "holds it: after the fork, DropoutOnTask.p: 0.1, not 0.0 (what a task built with "
        "dropout=0.0 holds)"
    )
    assert "DropoutOnTask.apply_hparams" in str(err.value)
    # with apply_hparams setting it, it is forkable, and a fork sets it
    applied = _task("DropoutOnTaskApplied")
    check_forkable(load_study_file(_base_study(tmp_path / "ok", "DropoutOnTaskApplied", DROPOUT)),
                   applied)  # fmt: skip
    trainer = Trainer.create(applied(), SMALL, seed=0)
    fork(trainer, {"dropout": 0.3})
    assert trainer.task.p == 0.3


def test_a_key_apply_hparams_cannot_apply_is_refused_before_the_warm_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 22: `label_smoothing`, in a loss built in `Task.model`, with an `apply_hparams`
    that handles another key. Before, the warm-up ran and the first fork failed."""
    space = {"label_smoothing": {"float": [0.0, 0.3]}}
    path = _base_study(tmp_path, "SmoothedDigits", space, label_smoothing=0.1)
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert (
        f"{path}: search_space.label_smoothing: 'label_smoothing' cannot be forked: "
        "SmoothedDigits.apply_hparams raised KeyError for it"
    ) in err
    assert not list(tmp_path.rglob("manifest.json"))  # nothing trained


def test_a_key_that_changes_the_weights_is_refused_whatever_route(tmp_path: Path) -> None:
    """`hidden` beside a warm-up, in a task that overrides `apply_hparams`: before, accepted at
    load (the task said it could apply it), then every fork failed."""
    path = _base_study(tmp_path, "SmoothedDigits", {"hidden": {"categorical": [16, 32]}},
                       label_smoothing=0.1)  # fmt: skip
    with pytest.raises(StudyFileError) as err:
        check_forkable(load_study_file(path), _task("SmoothedDigits"))
    assert str(err.value) == (
        f"{path}: search_space.hidden: 'hidden' cannot be forked: SmoothedDigits.model builds "
        "other weights for hidden=32 than for 16 (0.bias (16,) float32 vs (32,) float32, "
        "0.weight (16, 64) float32 vs (32, 64) float32, 3.bias (16,) float32 vs (32,) float32 "
        "and 2 more), and a fork keeps the parent's weights; remove it from search_space, or "
        "grow a fork tree instead (its roots sample such a key and their children keep it)"
    )


def _task(cls: str) -> Any:
    from hpsearch.config.taskload import load_task

    return load_task(f"{TASKS}:{cls}")


# -- a node's training is a function of its recipe ------------------------------------------


def _char_tree(tmp_path: Path, **tree: Any) -> str:
    """A tree of CharTree (nn.TransformerEncoderLayer) nodes that fork dropout, lr and batch
    size, with the wsd schedule. 256 windows, so the rungs (64, 128, 256 samples) fall on batch
    boundaries (replay over-trained a rung between batches until it was fixed)."""
    doc = {
        "name": "chartree", "task": f"{TASKS}:CharTree", "seed": 0,
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "storage": f"sqlite:///{tmp_path}/study.db",
        "checkpoints": {"dir": str(tmp_path / "ckpt"), "every": 0.25, "keep_best": 20},
        "tree": {"roots": 4, "rungs": [0.25, 0.5, 1.0], "keep": 0.5, "children": 2,
                 "hparams": {"weight_decay": 0.0, "hidden": 16}, **tree},
        "trials": {"epochs": 1, "eval_every": 0.25},
        "schedule": {"name": "wsd", "decay": 0.25},
        "search_space": {"lr": {"float": [1e-3, 3e-2], "log": True},
                         "dropout": {"float": [0.0, 0.5]},
                         "batch_size": {"categorical": [16, 32]}},
        "sampler": {"name": "RandomSampler"}, "pruner": {"name": "NopPruner"},
    }  # fmt: skip
    os.makedirs(tmp_path, exist_ok=True)
    path = tmp_path / "chartree.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


PARENT = {"dropout": 0.4, "lr": 3e-3, "batch_size": 32}
OTHER = {"dropout": 0.05, "lr": 1e-2, "batch_size": 16}
CHILD = {"dropout": 0.2, "lr": 2e-2, "batch_size": 16}


def _root(ctx: Any, values: dict[str, Any]) -> str:
    """A root trained 64 samples from scratch: its checkpoint's id."""
    trainer = Restorer(ctx).scratch({**warmup_hparams(ctx.settings), **values}, total_samples=256)
    trainer.train(Budget(samples=64))
    return ctx.session.store.save(*trainer.state()).id


def _node(restorer: Restorer, parent: str) -> tuple[dict, dict]:
    """The node CHILD forked from `parent`, trained to 128 samples: its end state."""
    trainer = restorer.from_checkpoint(parent)
    fork(trainer, CHILD)
    trainer.begin_segment()
    trainer.train(Budget(samples=128))
    tensors, state = trainer.state()
    return {g: {k: v.clone() for k, v in d.items()} for g, d in tensors.items()}, state


def node_in_a_fresh_process(path: str, parent: str) -> str:
    """Run by the test below in a child process: the node from a fresh worker; saved."""
    ctx = run_context(Session.open(path, create=False))
    try:
        return ctx.session.store.save(*_node(Restorer(ctx), parent)).id
    finally:
        close_context(ctx)


def test_a_node_trains_the_same_after_any_predecessor(tmp_path: Path) -> None:
    path = _char_tree(tmp_path)
    ctx = run_context(Session.open(path, create=True))
    try:
        parent, other = _root(ctx, PARENT), _root(ctx, OTHER)
        want = _node(Restorer(ctx), parent)  # a worker's first node: restored fresh
        runs: dict[str, tuple[dict, dict]] = {}
        worker = Restorer(ctx)
        worker.scratch({**warmup_hparams(ctx.settings), **OTHER}, total_samples=256)
        runs["after a root of another dropout"] = _node(worker, parent)
        runs["after itself"] = _node(worker, parent)
        other_child = worker.from_checkpoint(other)
        fork(other_child, {"dropout": 0.45})
        other_child.train(Budget(samples=96))
        runs["after a node forked from another root"] = _node(worker, parent)
        worker.hold(parent)  # fork from a base held in memory, after another node
        worker.from_checkpoint(other)
        runs["from memory"] = _node(worker, parent)
    finally:
        close_context(ctx)
    code = (
        f"import sys; sys.path.insert(0, {HERE!r}); import test_fork_reach as t; "
        f"print(t.node_in_a_fresh_process({path!r}, {parent!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    session = Session.open(path, create=False)
    try:
        loaded = session.store.load(proc.stdout.split()[-1])
        runs["in a fresh process"] = (loaded.tensors, loaded.state)
    finally:
        session.close()
    for how, got in runs.items():
        diff = first_difference(want, got)
        assert diff is None, f"{how}: differs first at {diff}"


def _replays_every_node(path: str) -> int:
    """Replay every complete trial of the study from scratch; each must equal its final
    checkpoint bit for bit. The number replayed."""
    session = Session.open(path, create=False)
    try:
        done = [t for t in session.study.get_trials() if t.state == TrialState.COMPLETE]
        for t in done:
            _, result = replay(session, t.number, say=lambda _: None)
            assert result.compared > 0 and result.differs == [], (t.number, result.differs)
        return len(done)
    finally:
        session.close()


def test_a_transformer_tree_that_forks_dropout_replays_bit_for_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 26: the nodes ran on one reused trainer, whose attention kept the dropout of the
    first root the worker built; replay builds each recipe afresh and differed."""
    path = _char_tree(tmp_path)
    assert main(["run", path]) == 0
    session = Session.open(path, create=False)
    try:
        trials = {t.number: t for t in session.study.get_trials()}
    finally:
        session.close()
    forked = [
        t
        for t in trials.values()
        if trial_attr(t, "parent_trial") is not None
        and t.params["dropout"] != trials[trial_attr(t, "parent_trial")].params["dropout"]
    ]
    assert forked, "no node changed its parent's dropout: the test would prove nothing"
    assert _replays_every_node(path) == 12
    capsys.readouterr()
    assert main(["replay", path]) == 0
    assert "bitwise identical" in capsys.readouterr().out


def test_a_tree_whose_roots_sample_a_key_no_fork_changes_runs_and_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 22: `label_smoothing` in a loss that `Task.model` builds and the task keeps. The
    roots sample it, the children inherit it; a reused trainer held the previous root's value,
    and every child of another root failed with 'checkpoint ... cannot be used (KeyError)'."""
    path = write_study(
        tmp_path, name="smooth", task=f"{TASKS}:SmoothedDigits", warmup=None,
        objective={"metric": "val_loss", "direction": "minimize"},
        checkpoints={"every": 0.25, "keep_best": 20},
        tree={"roots": 4, "rungs": [0.5, 1.0], "keep": 0.5, "children": 2,
              "hparams": {"batch_size": 64, "weight_decay": 0.0, "hidden": 16, "dropout": 0.1}},
        trials={"epochs": 0.5, "eval_every": 0.25},
        search_space={"lr": {"float": [1e-3, 3e-2], "log": True},
                      "label_smoothing": {"float": [0.0, 0.3]}},
        sampler={"name": "RandomSampler"}, pruner={"name": "NopPruner"},
    )  # fmt: skip
    assert main(["run", path]) == 0
    out = capsys.readouterr()
    assert "cannot be used" not in out.out + out.err
    assert _replays_every_node(path) == 8
