"""The conformance zoo: the families of models, optimizers, schedulers and data pipelines users
train, each as one line of `ZOO`, every one of which must resume and fork bit for bit.

An entry is a `Spec`: a model family (`MODELS`), an optimizer (`OPTIMIZERS`), an optional torch
scheduler (`SCHEDULERS`) and a data pipeline (`DATA`), plus the number of DataLoader workers.
`tests/test_zoo.py` trains each entry K steps, checkpoints, trains K more (the uninterrupted run),
restores the checkpoint in a fresh process (`tests/zoo_child.py`) and continues there, then forks
(lr, batch_size and dropout changed) from the restored and from the uninterrupted state, and
compares everything bitwise. To add an entry, add one line to `ZOO` (and a builder if the family
is new). The fork matrix (`MATRIX`) forks every model family in every registry key and compares
each fork with a model built with the child's values.
The loop's escape hatches (clipping, accumulation, precision, `Task.training_step`, a task's own
state) have their entries in `tests/zoo_hatches.py`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

import hpsearch
from hpsearch.config import TrainingSettings
from hpsearch.training import Budget, Every, Hooks, Trainer, fork, state

THREADS = 1  # tiny ops: more threads only spin, and on a loaded machine they crawl
K = 6  # steps before the checkpoint, and after it
N = 48  # training samples
HP: dict[str, Any] = {"lr": 1e-2, "batch_size": 8, "dropout": 0.1, "weight_decay": 1e-4,
                      "momentum": 0.9, "betas": [0.9, 0.999], "eps": 1e-8}  # fmt: skip
FORK = {"lr": 3e-3, "batch_size": 5, "dropout": 0.3}
PLAIN = TrainingSettings()
VOCAB, SEQ, DIM, CLASSES = 16, 6, 8, 4

# ---------------------------------------------------------------------------------------------
# data: each pipeline yields batches of (inputs, targets) in some structure


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _vectors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(n, DIM, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


class DictSamples(Dataset):
    """Samples as dicts: `{"x": ..., "y": ...}`, collated to a dict batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class NestedSamples(DictSamples):
    """Nested samples: `((x, {"y": y}), index)`."""

    def __getitem__(self, i: int) -> Any:
        return ((self.x[i], {"y": self.y[i]}), i)


class Augmented(DictSamples):
    """Random augmentation with all three RNGs a transform may use: torch noise, a NumPy
    scale and a `random` flip, in `__getitem__` (so in DataLoader workers when there are some)."""

    def __getitem__(self, i: int) -> Any:
        x = self.x[i] + 0.1 * torch.randn(DIM)
        x = x * float(np.random.uniform(0.9, 1.1))
        if random.random() < 0.5:
            x = -x
        return x, self.y[i]


def _tensor(n: int, seed: int) -> Dataset:
    return TensorDataset(*_vectors(n, seed))


DATA: dict[str, Callable[[int, int], Dataset]] = {
    "tuple": _tensor,
    "dict": lambda n, seed: DictSamples(*_vectors(n, seed)),
    "nested": lambda n, seed: NestedSamples(*_vectors(n, seed)),
    "augment": lambda n, seed: Augmented(*_vectors(n, seed)),
}


def _xy(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, dict):
        return batch["x"], batch["y"]
    if isinstance(batch[0], (tuple, list)):  # nested
        (x, inner), _ = batch
        return x, inner["y"]
    return batch[0], batch[1]


# ---------------------------------------------------------------------------------------------
# models: each maps a (batch, DIM) float input to (batch, CLASSES) logits


class MLP(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(DIM, 16), nn.Dropout(p), nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(F.relu(self.a(x))))


class ConvNet(nn.Module):
    """The 8 inputs as a 2-channel 2x2 image; `norm` picks the normalisation."""

    def __init__(self, p: float, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.norm = {
            "batch": lambda: nn.BatchNorm2d(6),
            "group": lambda: nn.GroupNorm(2, 6),
        }[norm]()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(6) if norm == "batch" else nn.GroupNorm(3, 6)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(6 * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 2, 2, 2)
        x = F.relu(self.norm(self.conv(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        return self.head(self.drop(x.flatten(1)))


class LayerNormNet(MLP):
    def __init__(self, p: float) -> None:
        super().__init__(p)
        self.ln = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(F.gelu(self.ln(self.a(x)))))


class TiedLM(nn.Module):
    """Input and output embeddings tied as in GPT-2 and nanoGPT: `head.weight = emb.weight`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.emb.weight
        self.cls = nn.Linear(VOCAB, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = (x.abs() * 4).long().clamp_(0, VOCAB - 1)  # (batch, DIM) token ids
        h = self.drop(torch.tanh(self.mix(self.emb(tokens))))
        return self.cls(self.head(h).mean(1))


class Recurrent(nn.Module):
    def __init__(self, p: float, kind: str) -> None:
        super().__init__()
        self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[kind](2, 8, num_layers=2, dropout=p,
                                                          batch_first=True)  # fmt: skip
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(-1, DIM // 2, 2))
        return self.head(out[:, -1])


class Encoder(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=p, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x.reshape(-1, DIM // 4, 4)).mean(1))


class Attention(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, dropout=p, batch_first=True)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.reshape(-1, DIM // 4, 4)
        out, _ = self.attn(s, s, s)
        return self.head(out.mean(1))


class Parametrized(MLP):
    """`weight_norm` on one layer, `spectral_norm` (whose u/v buffers change in every training
    forward pass) on the other."""

    def __init__(self, p: float) -> None:
        super().__init__(p)
        P = nn.utils.parametrizations
        self.a = P.weight_norm(nn.Linear(DIM, 16))
        self.b = P.spectral_norm(nn.Linear(16, CLASSES))


class PartlyTrained(MLP):
    """A frozen layer, and a branch that gets a gradient only on some steps (when the batch's
    first label is even), so optimizers see parameters without grads."""

    def __init__(self, p: float) -> None:
        super().__init__(p)
        self.frozen = nn.Linear(DIM, DIM)
        self.frozen.requires_grad_(False)
        self.branch = nn.Linear(16, CLASSES)
        self.use_branch = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self.a(self.frozen(x))))
        return self.b(h) + (self.branch(h) if self.use_branch else 0)


class Buffers(MLP):
    """Non-persistent buffers (not saved; rebuilt by the task) next to persistent ones."""

    def __init__(self, p: float) -> None:
        super().__init__(p)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, DIM), persistent=False)
        self.register_buffer("seen", torch.zeros(()), persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen += x.shape[0]
        return super().forward(x * self.scale)


class ParamContainers(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        g = _gen(3)
        self.ws = nn.ParameterList([nn.Parameter(torch.randn(DIM, 16, generator=g) * 0.3)])
        self.named = nn.ParameterDict({"out": nn.Parameter(torch.randn(16, CLASSES, generator=g)),
                                       "bias": nn.Parameter(torch.zeros(CLASSES))})  # fmt: skip
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(F.relu(x @ self.ws[0])) @ self.named["out"] + self.named["bias"]


class WithEMA(MLP):
    """An exponential moving average of the weights kept as buffers, updated in forward."""

    def __init__(self, p: float) -> None:
        super().__init__(p)
        for name, w in list(self.named_parameters()):
            self.register_buffer("ema_" + name.replace(".", "_"), w.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                for name, w in self.named_parameters():
                    getattr(self, "ema_" + name.replace(".", "_")).lerp_(w, 0.1)
        return super().forward(x)


class MixedDtypes(MLP):
    """One layer in float64, the rest in float32."""

    def __init__(self, p: float) -> None:
        super().__init__(p)
        self.a = self.a.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(F.relu(self.a(x.double()).float())))


MODELS: dict[str, Callable[[float], nn.Module]] = {
    "mlp": MLP,
    "cnn_batchnorm": lambda p: ConvNet(p, "batch"),
    "cnn_groupnorm": lambda p: ConvNet(p, "group"),
    "layernorm": LayerNormNet,
    "tied_embeddings": TiedLM,
    "gru": lambda p: Recurrent(p, "gru"),
    "lstm": lambda p: Recurrent(p, "lstm"),
    "transformer_encoder": Encoder,
    "multihead_attention": Attention,
    "weight_and_spectral_norm": Parametrized,
    "frozen_and_sometimes_unused": PartlyTrained,
    "non_persistent_buffers": Buffers,
    "parameter_list_dict": ParamContainers,
    "ema_buffers": WithEMA,
    "mixed_dtypes": MixedDtypes,
    "compiled": lambda p: torch.compile(MLP(p)),
}

# ---------------------------------------------------------------------------------------------
# optimizers and schedulers


Build = Callable[[nn.Module, dict[str, Any]], torch.optim.Optimizer]


def _trained(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _opt(cls: Any, **kw: Any) -> Build:
    return lambda model, hp: cls(_trained(model), lr=float(hp["lr"]), **kw)


OPT = torch.optim
OPTIMIZERS: dict[str, Build] = {
    # every setting a fork may change from the hparams: the fork matrix's optimizers
    "sgd_from_hparams": lambda model, hp: OPT.SGD(
        _trained(model),
        lr=float(hp["lr"]),
        momentum=float(hp["momentum"]),
        weight_decay=float(hp["weight_decay"]),
    ),
    "adamw_from_hparams": lambda model, hp: OPT.AdamW(
        _trained(model),
        lr=float(hp["lr"]),
        betas=tuple(hp["betas"]),
        eps=float(hp["eps"]),
        weight_decay=float(hp["weight_decay"]),
    ),
    "sgd_nesterov": _opt(OPT.SGD, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": _opt(OPT.Adam),
    "adamw_foreach": _opt(OPT.AdamW, foreach=True, weight_decay=1e-2),
    "adamw_fused": _opt(OPT.AdamW, fused=True),
    "adam_amsgrad": _opt(OPT.Adam, amsgrad=True),
    "rmsprop": _opt(OPT.RMSprop, momentum=0.5, centered=True),
    "adagrad": _opt(OPT.Adagrad),
    "adamax": _opt(OPT.Adamax),
    "nadam": _opt(OPT.NAdam, decoupled_weight_decay=True, weight_decay=1e-2),
    "radam": _opt(OPT.RAdam),
    "adadelta": _opt(OPT.Adadelta),
    "asgd": _opt(OPT.ASGD, t0=3),
    "rprop": _opt(OPT.Rprop),
    "adafactor": _opt(OPT.Adafactor),
}


class Warmup:
    """A callable object as a LambdaLR factor: torch saves its `__dict__` with the scheduler."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.steps)


def _halve(step: int) -> float:
    return 0.5 ** (step // 4)


S = torch.optim.lr_scheduler
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "step": lambda o: S.StepLR(o, 3, gamma=0.5),
    "multistep": lambda o: S.MultiStepLR(o, [2, 5, 9], gamma=0.5),
    "exponential": lambda o: S.ExponentialLR(o, 0.9),
    "cosine": lambda o: S.CosineAnnealingLR(o, 12),
    "cosine_warm_restarts": lambda o: S.CosineAnnealingWarmRestarts(o, 4, T_mult=2),
    "one_cycle": lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=40),
    "cyclic": lambda o: S.CyclicLR(o, 1e-3, 0.05, step_size_up=3),
    "linear": lambda o: S.LinearLR(o, 0.2, 1.0, total_iters=8),
    "polynomial": lambda o: S.PolynomialLR(o, 20, power=2.0),
    "lambda_function": lambda o: S.LambdaLR(o, _halve),
    "lambda_object": lambda o: S.LambdaLR(o, Warmup(5)),
    "sequential": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, 0.1, total_iters=4), S.ExponentialLR(o, 0.9)], milestones=[4]
    ),
    "chained": lambda o: S.ChainedScheduler([S.ExponentialLR(o, 0.95), S.StepLR(o, 3, 0.5)]),
    "reduce_on_plateau": lambda o: S.ReduceLROnPlateau(o, patience=0, factor=0.5),
}

# ---------------------------------------------------------------------------------------------
# the entries


@dataclass(frozen=True)
class Spec:
    model: str = "mlp"
    optimizer: str = "adamw_foreach"
    scheduler: str | None = None
    data: str = "tuple"
    workers: int = 0
    precision: str = "fp32"  # "bf16": the loss runs under CPU autocast
    training: TrainingSettings = PLAIN  # the loop's escape hatches
    task: str = "plain"  # or a task of tests/zoo_hatches.py: "training_step", "ema"


ZOO: dict[str, Spec] = {
    **{f"model-{m}": Spec(model=m) for m in MODELS},
    "model-bf16_autocast": Spec(precision="bf16"),
    "model-cnn_batchnorm-sgd-augment-workers": Spec(
        "cnn_batchnorm", "sgd_nesterov", data="augment", workers=2
    ),
    **{f"optimizer-{o}": Spec(optimizer=o) for o in OPTIMIZERS},
    **{f"scheduler-{s}": Spec(optimizer="sgd_nesterov", scheduler=s) for s in SCHEDULERS},
    **{f"data-{d}": Spec(data=d) for d in DATA},
    # workers cost a process start per epoch and per evaluation: two entries cover them
    "data-tuple-workers2": Spec(data="tuple", workers=2),
    "data-augment-workers2": Spec(data="augment", workers=2),
}
EXTRA_HP: dict[str, dict[str, Any]] = {}  # an entry's hparams beyond HP
FORKS: dict[str, dict[str, Any]] = {}  # an entry's fork, where FORK does not fit it


def _add_hatches() -> None:
    from zoo_hatches import ENTRIES

    for name, (spec, extra_hp, changes) in ENTRIES.items():
        ZOO[name] = spec
        if extra_hp:
            EXTRA_HP[name] = extra_hp
        if changes:
            FORKS[name] = changes


class ZooTask(hpsearch.Task):
    """One zoo entry as an ordinary hpsearch Task."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def datasets(self) -> tuple[Dataset, Dataset]:
        make = DATA[self.spec.data]
        return make(N, 1), make(16, 2)

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        return MODELS[self.spec.model](float(hparams["dropout"]))

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.spec.optimizer](model, hparams)

    def scheduler(self, optimizer: Any, hparams: dict[str, Any], total_steps: int) -> Any:
        return SCHEDULERS[self.spec.scheduler](optimizer) if self.spec.scheduler else None

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _xy(batch)
        if isinstance(model, PartlyTrained):
            model.use_branch = int(y[0]) % 2 == 0
        if self.spec.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return F.cross_entropy(model(x).float(), y)
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        total, n = 0.0, 0
        for batch in loader:
            x, y = _xy(batch)
            total += float(F.cross_entropy(model(x).float(), y, reduction="sum"))
            n += len(y)
        return {"val_loss": total / n}


class Losses(Hooks):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_step(self, trainer: Trainer, indices: list[int], loss: float) -> None:
        self.values.append(loss)


def _task(spec: Spec) -> ZooTask:
    if spec.task == "plain":
        return ZooTask(spec)
    import zoo_hatches

    return zoo_hatches.TASKS[spec.task](spec)


def hparams(name: str) -> dict[str, Any]:
    return {**HP, **EXTRA_HP.get(name, {})}


def fork_changes(name: str) -> dict[str, Any]:
    """What the fork of the entry changes: `FORK`, unless the entry needs another fork."""
    return FORKS.get(name, FORK)


# the zoo runs on the CPU in CI; benchmarks/gpu_check.py runs it on a GPU with this set to cuda
DEVICE = os.environ.get("HPSEARCH_ZOO_DEVICE", "cpu")


def create(name: str) -> Trainer:
    spec = ZOO[name]
    return Trainer.create(
        _task(spec), hparams(name), seed=7, total_samples=4 * N, num_workers=spec.workers,
        objective="val_loss", training=spec.training, device=DEVICE,
    )  # fmt: skip


def restore(name: str, loaded: Any) -> Trainer:
    spec = ZOO[name]
    return Trainer.restore(_task(spec), loaded.tensors, loaded.state, num_workers=spec.workers,
                           device=DEVICE)  # fmt: skip


def train(trainer: Trainer, until_step: int) -> list[float]:
    """Train to `until_step` steps since the run began; the per-step losses."""
    losses = Losses()
    trainer.train(Budget(steps=until_step), hooks=losses, eval_every=Every(steps=3))
    return losses.values


# ---------------------------------------------------------------------------------------------
# the fork matrix: every model family forked in every registry key, each fork compared with a
# model built with the child's values. A fork at step 0 is the same computation as a run built
# with the child's values from the start: the same seed, the same initial weights (no key here
# changes them), the same data order.

MATRIX: dict[str, tuple[str, Any]] = {  # key: (the optimizer that holds it, the child's value)
    "lr": ("sgd_from_hparams", 3e-3),
    "dropout": ("sgd_from_hparams", 0.3),
    "batch_size": ("sgd_from_hparams", 5),
    "weight_decay": ("sgd_from_hparams", 3e-2),
    "momentum": ("sgd_from_hparams", 0.5),
    "betas": ("adamw_from_hparams", [0.8, 0.99]),
    "eps": ("adamw_from_hparams", 1e-3),
}


Run = tuple[Trainer, list[float]]  # a trainer and its per-step losses


# a compiled model compiles again after each fork (seconds): its one case forks every key the
# SGD optimizer holds at once
MATRIX_CASES: list[tuple[str, tuple[str, ...]]] = [
    *((family, (key,)) for family in MODELS if family != "compiled" for key in MATRIX),
    ("compiled", tuple(k for k, (opt, _) in MATRIX.items() if opt == "sgd_from_hparams")),
]


def forked_and_built(family: str, keys: tuple[str, ...]) -> tuple[Run, Run]:
    """Model `family` with the matrix's optimizer for `keys`: one trainer built with the zoo's
    hparams and forked to the child's values of `keys` at step 0, one built with the child's
    values; both trained K steps."""
    changes = {key: MATRIX[key][1] for key in keys}
    task = ZooTask(Spec(model=family, optimizer=MATRIX[keys[0]][0]))
    runs = []
    for hp, fork_to in ((HP, changes), ({**HP, **changes}, {})):
        trainer = Trainer.create(task, hp, seed=7, total_samples=4 * N, objective="val_loss",
                                 device=DEVICE)  # fmt: skip
        if fork_to:
            assert fork(trainer, fork_to) == fork_to
        runs.append((trainer, train(trainer, K)))
    return runs[0], runs[1]


def ties_kept(name: str, trainer: Trainer) -> bool:
    """Whether the trainer's model has the tied weights a fresh `Task.model()` has."""
    fresh = ZooTask(ZOO[name]).model(HP)
    return len(state.tied_names(fresh)) == len(state.tied_names(trainer.model))


_add_hatches()
