"""The char transformer of `chars.py` on a larger corpus: 1.2 MB of Python's standard library
source (62 modules read from this interpreter, no download) instead of 400 KB, with a context of
32 characters.

Same model class, optimizer, loss and metrics as `chars.CharLM`; the size comes from the
hparams (the search benchmark uses d=32, one layer, two heads: a step costs a seventh of the
d=64, 2-layer, context-64 model's on this CPU). Validation is every tenth 4 KB block, as there,
thinned to every fourth window (about 930 windows from every module), so that an evaluation
costs a few batches: the benchmark evaluates eight times per run.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chars

MODULES = (
    *chars.MODULES,
    "inspect", "typing", "pathlib", "subprocess", "threading", "datetime", "locale", "optparse",
    "pickle", "platform", "socket", "ssl", "tarfile", "traceback", "warnings", "weakref",
    "gettext", "imaplib", "ftplib", "smtplib", "mailbox", "doctest", "ast", "pdb", "ipaddress",
    "uuid", "gzip", "base64", "mimetypes", "codecs", "os", "ntpath", "bdb", "trace", "pstats",
    "dis", "plistlib", "zipimport", "pydoc", "socketserver", "pickletools", "compileall",
)  # fmt: skip
MAX_CHARS = 1_200_000
VAL_STRIDE = 4  # keep every fourth validation window
CONTEXT = 32


def large_datasets() -> tuple[Dataset, Dataset]:
    data = chars.encode(chars.stdlib_text(MODULES, MAX_CHARS))
    blocks = data.split(chars.BLOCK)
    every = chars.VAL_EVERY
    train = torch.cat([b for i, b in enumerate(blocks) if i % every != every - 1])
    val = torch.cat([b for i, b in enumerate(blocks) if i % every == every - 1])
    val_windows = chars.Windows(val, CONTEXT)
    return (
        chars.Windows(train, CONTEXT),
        Subset(val_windows, range(0, len(val_windows), VAL_STRIDE)),
    )


class CharLMLarge(chars.CharLM):
    """`chars.CharLM` on the 1.2 MB corpus, context 32."""

    def datasets(self) -> tuple[Any, Any]:
        return large_datasets()

    def model(self, hparams: dict[str, Any]) -> torch.nn.Module:
        return chars.CharTransformer(
            d=int(hparams.get("d_model", 32)),
            layers=int(hparams.get("layers", 1)),
            heads=int(hparams.get("heads", 2)),
            context=CONTEXT,
            p=float(hparams.get("dropout", 0.1)),
        )
