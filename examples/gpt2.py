"""A tiny GPT-2 from Hugging Face transformers, tuned by hpsearch through the ordinary Task API.

The model is built from `transformers.GPT2Config` (nothing is downloaded): 2 layers, 64 dims,
a character vocabulary (ASCII), the output layer tied to the token embedding. The text is
Python's own standard library source, read from this interpreter's files at run time (200 kB
at most), cut into windows of `BLOCK` characters. Needs `pip install 'hpsearch[transformers]'`.

    hpsearch run studies/gpt2.yaml
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

import hpsearch

BLOCK = 32  # characters per training window
VOCAB = 128  # ASCII; any other character reads as 0 (fixed: the model is built before the data)
# standard-library modules whose source is the corpus: present in every CPython 3.10+
SOURCES = ("textwrap", "string", "json/encoder", "json/decoder", "fractions", "calendar",
           "heapq", "bisect", "shlex", "difflib")  # fmt: skip


def corpus(max_chars: int = 200_000) -> str:
    """The standard library's source files named in SOURCES, joined, at most `max_chars`."""
    stdlib = os.path.dirname(os.__file__)
    parts = []
    for name in SOURCES:
        with open(os.path.join(stdlib, name + ".py"), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)[:max_chars]


def char_datasets(text: str, val_fraction: float = 0.1) -> tuple[Dataset, Dataset]:
    """Non-overlapping windows of BLOCK character ids: the first 90 % to train, the rest to
    validate."""
    ids = torch.tensor([b if b < VOCAB else 0 for b in text.encode("utf-8")], dtype=torch.long)
    windows = ids[: len(ids) // BLOCK * BLOCK].view(-1, BLOCK)
    n_val = max(1, round(len(windows) * val_fraction))
    return TensorDataset(windows[:-n_val]), TensorDataset(windows[-n_val:])


class TinyGPT2(hpsearch.Task):
    """GPT-2 on characters; hparams: lr, batch_size, weight_decay, dropout (every dropout of the
    model: a forkable key), and n_embd / n_layer / n_head (fixed by the warm-up)."""

    max_chars = 200_000
    eval_batch_size = 128

    def datasets(self) -> tuple[Dataset, Dataset]:
        return char_datasets(corpus(self.max_chars))

    def model(self, hparams: dict[str, Any]) -> torch.nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        p = float(hparams.get("dropout", 0.0))
        config = GPT2Config(
            vocab_size=VOCAB, n_positions=BLOCK, bos_token_id=0, eos_token_id=0,
            n_embd=int(hparams.get("n_embd", 64)), n_layer=int(hparams.get("n_layer", 2)),
            n_head=int(hparams.get("n_head", 2)),
            resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, tie_word_embeddings=True,
        )  # fmt: skip
        model = GPT2LMHeadModel(config)
        model.loss_type = "ForCausalLM"  # what transformers would pick, named: no warning
        return model

    def optimizer(self, model: torch.nn.Module, hparams: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            model.parameters(), lr=float(hparams["lr"]),
            weight_decay=float(hparams.get("weight_decay", 0.0)),
        )  # fmt: skip

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        (ids,) = batch
        return model(input_ids=ids, labels=ids).loss  # transformers shifts the labels

    def evaluate(self, model: torch.nn.Module, loader: Any) -> dict[str, float]:
        total, count = 0.0, 0
        for (ids,) in loader:
            total += float(model(input_ids=ids, labels=ids).loss) * len(ids)
            count += len(ids)
        loss = total / count  # nats per predicted character
        return {"val_loss": loss, "val_bpc": loss / math.log(2)}
