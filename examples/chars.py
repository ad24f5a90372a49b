"""A second real task: a small character-level transformer on Python's own standard library source.

The text is a fixed list of stdlib modules read from this interpreter's installation (no download),
cut to ~400 KB and encoded as 7-bit ASCII. Every tenth 4 KB block is held out for validation, so
both splits sample every module. The model is a 2-layer pre-norm causal transformer (d=64, 4 heads,
context 64, ~110k parameters) with dropout on the embeddings and the residual branches, trained with
AdamW. The objective is validation bits per character (lower is better).

The corpus depends on the Python version (its stdlib sources differ), so compare numbers measured
with the same interpreter only.
"""

from __future__ import annotations

import math
import os
import sysconfig
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import hpsearch

# Modules whose source is the corpus, read in this order: plain, well-commented library code in
# several styles. A module that is a package in some Python versions is read from its __init__.py.
MODULES = (
    "argparse", "textwrap", "functools", "dataclasses", "heapq", "pprint", "calendar",
    "tokenize", "contextlib", "fractions", "random", "statistics", "csv", "string",
    "queue", "shutil", "tempfile", "configparser", "difflib", "enum",
)  # fmt: skip
MAX_CHARS = 400_000
CONTEXT = 64  # characters per window; the model's positional table has exactly this many
BLOCK = 4096  # validation takes every VAL_EVERY-th block of this many characters
VAL_EVERY = 10
VOCAB = 128  # 7-bit ASCII; anything else becomes "?"


def stdlib_text(modules: tuple[str, ...] = MODULES, max_chars: int = MAX_CHARS) -> str:
    """The source of `modules` from this interpreter's standard library, concatenated."""
    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for name in modules:
        for candidate in (f"{name}.py", os.path.join(name, "__init__.py")):
            path = os.path.join(root, candidate)
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                parts.append(text)
                total += len(text)
                break
        else:
            raise FileNotFoundError(f"standard library module {name!r} not found under {root}")
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


def encode(text: str) -> torch.Tensor:
    data = text.encode("ascii", errors="replace")  # non-ASCII -> b"?"
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class Windows(Dataset):
    """(input, target) pairs of `context` characters at fixed offsets `context` apart."""

    def __init__(self, data: torch.Tensor, context: int) -> None:
        self.data, self.context = data, context
        self.n = (len(data) - 1) // context

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        o = i * self.context
        chunk = self.data[o : o + self.context + 1]
        return chunk[:-1], chunk[1:]


def char_datasets(context: int = CONTEXT) -> tuple[Windows, Windows]:
    """Train / validation windows; validation is every VAL_EVERY-th BLOCK of the text."""
    data = encode(stdlib_text())
    blocks = data.split(BLOCK)
    train = torch.cat([b for i, b in enumerate(blocks) if i % VAL_EVERY != VAL_EVERY - 1])
    val = torch.cat([b for i, b in enumerate(blocks) if i % VAL_EVERY == VAL_EVERY - 1])
    return Windows(train, context), Windows(val, context)


class Block(nn.Module):
    """Pre-norm transformer block. Every dropout is an nn.Dropout module, so a fork can set it."""

    def __init__(self, d: int, heads: int, p: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop1, self.drop2 = nn.Dropout(p), nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.drop1(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop2(self.mlp(self.ln2(x)))


class CharTransformer(nn.Module):
    def __init__(self, d: int, layers: int, heads: int, context: int, p: float) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        self.drop = nn.Dropout(p)
        self.blocks = nn.Sequential(*(Block(d, heads, p) for _ in range(layers)))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)  # untied: safetensors stores no shared tensors
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.tok(idx) + self.pos[: idx.shape[1]])
        return self.head(self.ln(self.blocks(x)))


class CharLM(hpsearch.Task):
    """hparams: lr, dropout, batch_size, weight_decay (forkable); d_model, layers, heads (fixed by
    the warm-up). The context length is the data's (CONTEXT), not a hyperparameter."""

    eval_batch_size = 128

    def datasets(self) -> tuple[Windows, Windows]:
        return char_datasets()

    def model(self, hparams: dict[str, Any]) -> nn.Module:
        return CharTransformer(
            d=int(hparams.get("d_model", 64)),
            layers=int(hparams.get("layers", 2)),
            heads=int(hparams.get("heads", 4)),
            context=CONTEXT,
            p=float(hparams.get("dropout", 0.1)),
        )

    def optimizer(self, model: nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        # One param group: a fork sets weight_decay on every group, so a no-decay group for
        # biases and norms would be decayed in forked trials but not in classic ones.
        return torch.optim.AdamW(
            model.parameters(),
            lr=float(hparams["lr"]),
            weight_decay=float(hparams.get("weight_decay", 0.0)),
            betas=(0.9, 0.99),
        )

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        total, count = 0.0, 0
        for x, y in loader:
            logits = model(x)
            total += float(
                nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
            )
            count += y.numel()
        loss = total / count
        return {"val_loss": loss, "val_bpc": loss / math.log(2)}
