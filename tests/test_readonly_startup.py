"""The commands that only read a study start without torch: importing it costs seconds, and
`status`, `tree`, `export`, `best` (without --export) and `gc --dry-run` need none of it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hpsearch.cli import main
from studyutil import write_study

# a small fork tree: its status, recipe and GC pins take the paths a tree study takes
TREE = {
    "warmup": None,
    "tree": {"roots": 2, "rungs": [0.5, 1.0], "keep": 0.5, "children": 2,
             "hparams": {"weight_decay": 1e-4, "hidden": 32}},
    "trials": {"epochs": 0.5, "eval_every": 0.25},
    "checkpoints": {"every": 0.25, "keep_best": 2},
}  # fmt: skip
READ_ONLY = [["status"], ["tree", "--all"], ["export", "--evaluations"], ["best"],
             ["gc", "--dry-run"]]  # fmt: skip
# Every command in one process, one after the other: after each, whether torch came in. One
# start-up (about a second without torch) instead of one per command.
PROBE = """
import contextlib, io, json, sys
from hpsearch.cli import main
out = []
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main([args[0], sys.argv[2], *args[1:]])
    out.append([args, rc, sorted(m for m in sys.modules if m.partition(".")[0] == "torch")[:3]])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tree_study(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = write_study(tmp_path_factory.mktemp("readonly"), name="ro", **TREE)
    assert main(["run", path]) == 0
    return path


def test_read_only_commands_never_import_torch(tree_study: str) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(READ_ONLY), tree_study],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [(args, rc) for args, rc, _ in results] == [(args, 0) for args in READ_ONLY]
    assert [(args, torch) for args, _, torch in results if torch] == []
