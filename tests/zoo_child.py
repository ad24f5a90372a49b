"""The zoo's fresh process: `python zoo_child.py STORE JOBS.json OUT.json`.

For each entry of JOBS (`{name: checkpoint id}`) it restores the checkpoint and trains on (the
resumed run), then restores it again, forks with `zoo.fork_changes(name)` and trains on (the
fork), saving both end states to STORE. OUT gets
`{name: {"resume": id, "fork": id, "losses": [...], ...}}`, or `{"error": ...}` for an entry that
failed here.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch

import zoo
from hpsearch.checkpoint import open_store
from hpsearch.training import fork


def main(url: str, jobs_path: str, out_path: str) -> None:
    torch.set_num_threads(zoo.THREADS)
    store = open_store(url)
    with open(jobs_path) as f:
        jobs = json.load(f)
    out: dict[str, dict] = {}
    for name, ckpt_id in jobs.items():
        try:
            resumed = zoo.restore(name, store.load(ckpt_id))
            losses = zoo.train(resumed, 2 * zoo.K)
            result = {"resume": store.save(*resumed.state()).id, "losses": losses,
                      "tied": zoo.ties_kept(name, resumed)}  # fmt: skip
            forked = zoo.restore(name, store.load(ckpt_id))
            fork(forked, zoo.fork_changes(name))
            result["fork_losses"] = zoo.train(forked, 2 * zoo.K)
            result["fork"] = store.save(*forked.state()).id
            out[name] = result
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            out[name] = {"error": error, "traceback": traceback.format_exc()}
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
