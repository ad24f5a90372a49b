"""Start-up: how long `hpsearch run` is silent, and what its imports cost.

    python benchmarks/startup.py [--study studies/quickstart.yaml] [--repeat 3]

Runs `hpsearch run` on a fresh temporary copy of the study (so the warm-up has to start) and
times, from the process's start: the first byte it prints, and the first line that shows training
(the warm-up's bar or line). Also `python -X importtime` of the CLI module and of the run path.
Best of --repeat. Run it with `PYTHONPATH=<another checkout>/src` to measure another version.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy(study: str, workdir: str) -> str:
    with open(study) as f:
        doc = yaml.safe_load(f)
    file, _, cls = doc["task"].rpartition(":")
    if file and not os.path.isabs(file):
        doc["task"] = os.path.join(os.path.dirname(os.path.abspath(study)), file) + ":" + cls
    doc["checkpoints"]["dir"] = os.path.join(workdir, "ckpt")
    doc["storage"] = f"sqlite:///{workdir}/study.db"
    if "warmup" in doc:  # one trial after the warm-up
        doc["trials"]["n"] = 1
    else:  # a tree: the smallest budget (its first roots start as soon as the study opens)
        doc.pop("tree", None)
        doc["trials"]["budget"] = 1
    path = os.path.join(workdir, "s.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def first_output(study: str) -> tuple[float, float]:
    """Seconds to the first byte and to the first sign of training."""
    workdir = tempfile.mkdtemp(prefix="hpsearch-startup-")
    try:
        path = _copy(study, workdir)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "run", path],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        assert proc.stdout is not None
        first = training = None
        buf = b""
        while True:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else b""
            if not chunk:
                break
            now = time.perf_counter() - t0
            first = first if first is not None else now
            buf += chunk
            if training is None and re.search(rb"warm-up|trial +0", buf):
                training = now
        proc.wait()
        return float(first or 0.0), float(training or 0.0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def import_s(module: str) -> float:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True).stderr  # fmt: skip
    last = [line for line in out.splitlines() if line.rstrip().endswith(f"| {module}")]
    return int(last[-1].split("|")[1]) / 1e6 if last else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=os.path.join(ROOT, "studies", "quickstart.yaml"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    runs = [first_output(args.study) for _ in range(args.repeat)]
    cli = min(import_s("hpsearch.cli") for _ in range(args.repeat))
    run = min(import_s("hpsearch.search.runner") for _ in range(args.repeat))
    print(f"first byte: {min(r[0] for r in runs):.2f} s; first training line: "
          f"{min(r[1] for r in runs):.2f} s; import hpsearch.cli {cli:.2f} s, "
          f"hpsearch.search.runner {run:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
