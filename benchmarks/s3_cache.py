"""Reads of a shared parent on S3 (moto's server on loopback) with and without the local cache.

Run from the repository root, by hand (about half a minute):

    python benchmarks/s3_cache.py [--mb 25] [--loads 8]

One parent checkpoint of about `--mb` MB (model + optimizer + state) is saved to a fresh prefix
of a moto bucket; then `--loads` loads of it go through a store without a cache and through one
with a `ReadCache` in a temp directory (as a worker forking `--loads` children from it would).
It prints, for each: the files read from S3 (`store.reads.backend`), the GET requests the server
answered for data files, and the wall time of all loads (and of the first and the rest). It writes
nothing to RESULTS.md: the figures go there by hand. Loopback moto is far faster than real S3
(no network, no TLS), so the saving on a real bucket is larger than shown.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import s3server
from hpsearch.checkpoint import FsspecStore, ReadCache


class _Gets(logging.Handler):
    """Counts the GET requests of data files moto's (werkzeug's) request log shows."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "GET /" in msg and (".safetensors" in msg or "state.json" in msg):  # may be coloured
            self.n += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=25.0)
    ap.add_argument("--loads", type=int, default=8)
    args = ap.parse_args()
    s3 = s3server._start()
    os.environ.update(s3.env)
    gets = _Gets()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(gets)
    werkzeug.propagate = False

    n = int(args.mb * 1e6 / 4 / 3)  # model + two Adam moments, float32
    url = s3.url("bench")
    tensors = {
        "model": {"w": torch.randn(n)},
        "optimizer": {"exp_avg": torch.randn(n), "exp_avg_sq": torch.randn(n)},
    }
    parent = FsspecStore(url).save(tensors, {"step": 1})
    print(f"parent {parent.id}: {parent.nbytes / 1e6:.1f} MB in {len(parent.files)} files")
    with tempfile.TemporaryDirectory() as cache_dir:
        for label, cache in (("no cache", None), ("cache", ReadCache(cache_dir))):
            store = FsspecStore(url, cache=cache)
            gets.n = 0
            times = []
            for _ in range(args.loads):
                t = time.perf_counter()
                store.load(parent.id)
                times.append(time.perf_counter() - t)
            print(
                f"{label:>8}: {args.loads} loads, {store.reads.backend} files read from S3 "
                f"({gets.n} data GETs), {store.reads.cache} from the cache; "
                f"{sum(times):.2f} s in all (first {times[0]:.2f} s, then "
                f"{sum(times[1:]) / max(1, len(times) - 1):.3f} s each)"
            )


if __name__ == "__main__":
    main()
