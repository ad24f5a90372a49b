"""The char transformer of `chars.py` on a larger corpus: 1.2 MB of Python's standard library
source (62 modules read from this interpreter, no download) instead of 400 KB.

Same model, optimizer, loss and metrics as `chars.CharLM`; only the data differ. Validation is
every tenth 4 KB block, as there, thinned to every fourth window (about 470 windows of 64
characters from every module), so that an evaluation costs a few batches: the search benchmark
evaluates eight times per run.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chars  # noqa: E402  (the sibling example, imported by path like a study file imports it)

MODULES = chars.MODULES + (
    "inspect", "typing", "pathlib", "subprocess", "threading", "datetime", "locale", "optparse",
    "pickle", "platform", "socket", "ssl", "tarfile", "traceback", "warnings", "weakref",
    "gettext", "imaplib", "ftplib", "smtplib", "mailbox", "doctest", "ast", "pdb", "ipaddress",
    "uuid", "gzip", "base64", "mimetypes", "codecs", "os", "ntpath", "bdb", "trace", "pstats",
    "dis", "plistlib", "zipimport", "pydoc", "socketserver", "pickletools", "compileall",
)  # fmt: skip
MAX_CHARS = 1_200_000
VAL_STRIDE = 4  # keep every fourth validation window


def large_datasets() -> tuple[Dataset, Dataset]:
    data = chars.encode(chars.stdlib_text(MODULES, MAX_CHARS))
    blocks = data.split(chars.BLOCK)
    every = chars.VAL_EVERY
    train = torch.cat([b for i, b in enumerate(blocks) if i % every != every - 1])
    val = torch.cat([b for i, b in enumerate(blocks) if i % every == every - 1])
    val_windows = chars.Windows(val, chars.CONTEXT)
    return (
        chars.Windows(train, chars.CONTEXT),
        Subset(val_windows, range(0, len(val_windows), VAL_STRIDE)),
    )


class CharLMLarge(chars.CharLM):
    """`chars.CharLM` on the 1.2 MB corpus."""

    def datasets(self) -> tuple[Any, Any]:
        return large_datasets()
