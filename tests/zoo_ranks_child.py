"""The fresh process of tests/test_zoo_ranks.py: `python zoo_ranks_child.py STORE JOBS OUT`.

Rank 0 of its own Teams (one per group of entries, `zoo_ranks.groups`): for each entry of JOBS
(`{name: checkpoint id}`) it restores the checkpoint and trains on (the resumed run), then
restores it again, forks with the entry's changes and trains on (the fork), saving both end
states to STORE. OUT gets `{name: {"resume": id, "fork": id, "losses": [...], ...}}`, or
`{"error": ..., "traceback": ...}` for an entry that failed here.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zoo_ranks
from hpsearch.checkpoint import open_store


def main(url: str, jobs_path: str, out_path: str) -> None:
    zoo_ranks.one_thread()
    store = open_store(url)
    with open(jobs_path) as f:
        jobs = json.load(f)

    def save(trainer: zoo_ranks.Trainer) -> str:
        return str(store.save(*trainer.state()).id)

    out = zoo_ranks.each_in_teams(
        list(jobs),
        lambda team, name: zoo_ranks.resumed_and_forked(
            team, name, lambda: store.load(jobs[name]), save
        ),
    )
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
