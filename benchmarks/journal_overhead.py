"""The quickstart's bookkeeping on SQLite and on the journal storage (`storage: journal:///...`).

    python benchmarks/journal_overhead.py [--study studies/quickstart.yaml] [--runs 2]

Runs the same measurement (`study_overhead.run`) twice per round, alternated: once with the
study on SQLite (as shipped), once on the journal storage (Optuna's study in a journal file, the
lineage in the SQLite file beside it). Before the journal was a storage option, this script wired
it by hand for the run (benchmarks/RESULTS.md, "Study overhead on the fork-tree quickstart").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import optuna
from optuna.storages import JournalStorage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_overhead  # this directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def journal_url() -> Iterator[str]:
    """A journal storage URL in a fresh directory; Optuna's clock counts the journal's calls."""
    workdir = tempfile.mkdtemp(prefix="hpsearch-journal-")
    clock = study_overhead.OptunaClock
    targets = clock.TARGETS
    clock.TARGETS = (  # the journal's own storage calls, as _CachedStorage's are counted
        *targets,
        (JournalStorage, "set_trial_intermediate_value"),
        (JournalStorage, "get_all_trials"),
        (JournalStorage, "get_trial"),
    )
    try:
        yield f"journal:///{workdir}/study.journal"
    finally:
        clock.TARGETS = targets
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=os.path.join(ROOT, "studies", "quickstart.yaml"))
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for _ in range(args.runs):  # alternated, so drift on a shared machine hits both alike
        rows.append(("sqlite (as shipped)", study_overhead.run(args.study, 1)))
        with journal_url() as url:
            rows.append(("journal storage", study_overhead.run(args.study, 1, storage=url)))
    print()
    print(
        "| Optuna's storage | trials | outside training / in Optuna's calls "
        "| per trial: compute / outside / of which in Optuna's calls | trials ended |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows:
        print(
            f"| {name} | {r['trials']} | {r['overhead_total'] * 100:.1f} % / "
            f"{r['optuna_share'] * 100:.1f} % | {r['compute_ms_per_trial']:.0f} / "
            f"{r['overhead_ms_per_trial']:.0f} / {r['optuna_ms_per_trial']:.0f} ms | "
            f"{r['states']} |"
        )


if __name__ == "__main__":
    main()
