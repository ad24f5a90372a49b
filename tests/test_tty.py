"""What `hpsearch run` shows in a real terminal (a pseudo-terminal): the study's progress in the
trial bars with one worker, and plain prefixed lines, no bars, with several."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from studyutil import write_study


def _run_in_pty(cmd: list[str]) -> str:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def _study(tmp_path, name):
    return write_study(
        tmp_path, name=name,
        warmup={"epochs": 1, "hparams": {"lr": 1e-2, "batch_size": 64, "hidden": 32,
                                         "dropout": 0.1, "weight_decay": 0.0}},
        trials={"n": 4, "epochs": 0.5, "eval_every": 0.25},
        pruner={"name": "NopPruner"},
    )  # fmt: skip


def test_one_worker_shows_the_study_s_progress_in_its_bars(tmp_path):
    out = _run_in_pty([sys.executable, "-m", "hpsearch", "run", _study(tmp_path, "tty1")])
    assert "opening the study" in out.splitlines()[0]  # said at once
    assert "\r" in out  # bars redraw in place
    # a trial's bar carries the study's progress: finished/target, best so far, an ETA
    assert re.search(r"trial \d+ \[\d/4 trials, best val_accuracy [0-9.]+, ETA ", out)
    assert "4 finished trials" in out


def test_several_workers_print_prefixed_lines_and_no_bars(tmp_path):
    path = _study(tmp_path, "tty2")
    out = _run_in_pty([sys.executable, "-m", "hpsearch", "run", path, "--workers", "2"])
    assert "\r" not in out.replace("\r\n", "\n")  # nobody redraws over another's line
    results = [
        line for line in out.splitlines() if re.search(r"trial +\d+ (COMPLETE|PRUNED)", line)
    ]
    assert len(results) == 4
    assert all(line.startswith("[worker ") for line in results)
