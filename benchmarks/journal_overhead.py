"""What would Optuna's JournalFileBackend save on the quickstart? A measurement, not a feature.

    python benchmarks/journal_overhead.py [--study studies/quickstart.yaml] [--runs 2]

hpsearch keeps Optuna's study on SQLite (or PostgreSQL) and the lineage in the same database.
Issue 13 asks whether the study's bookkeeping can be under 10 % of the quickstart's trial time;
on SQLite it is about 42 % (`study_overhead.py`), most of it Optuna's own calls. This script runs
the same measurement (`study_overhead.run`) twice per round: once as shipped, once with Optuna's
study in a `JournalFileBackend` file and the lineage alone in the sqlite file beside it -- a
throwaway wiring done here by replacing two functions of `hpsearch.search.session` for the run.

It is not a storage option hpsearch offers: Optuna's journal reader skips a torn last line, but
an append after one glues the next record onto it and every later read fails, so an option needs
a repair of the tail on open first (see benchmarks/RESULTS.md). The one thing the prototype
leaves out is marking a trial whose final checkpoint garbage collection deleted (it writes
Optuna's RDB tables directly); that costs nothing while no final checkpoint goes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from hpsearch.lineage.schema import create_engine
from hpsearch.search import collect
from hpsearch.search import session as session_mod

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_overhead  # this directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _JournalAndLineage:
    """Stands where `session._storage` returns Optuna's RDBStorage: Optuna's storage is a journal
    file, and `engine` (which the lineage opens its tables on) a sqlite file beside it."""

    def __init__(self, db_path: str) -> None:
        self.journal = JournalStorage(JournalFileBackend(db_path + ".journal"))
        self.engine = create_engine(f"sqlite:///{db_path}")  # WAL, as the study's own


@contextlib.contextmanager
def journal_storage() -> Iterator[None]:
    real_storage, real_study = session_mod._storage, session_mod._study
    real_mark = collect.mark_deleted_finals

    def storage(settings: Any, url: str, *, create: bool) -> Any:
        db = url[len("sqlite:///") :]
        os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
        return _JournalAndLineage(db)

    def study(settings: Any, rdb: Any, name: str, url: str, **kw: Any) -> optuna.Study:
        return real_study(settings, rdb.journal, name, url, **kw)

    clock = study_overhead.OptunaClock
    targets = clock.TARGETS
    clock.TARGETS = (  # the journal's own storage calls, as _CachedStorage's are counted
        *targets,
        (JournalStorage, "set_trial_intermediate_value"),
        (JournalStorage, "get_all_trials"),
        (JournalStorage, "get_trial"),
    )
    session_mod._storage = storage  # type: ignore[assignment]
    session_mod._study = study  # type: ignore[assignment]
    collect.mark_deleted_finals = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        session_mod._storage, session_mod._study = real_storage, real_study  # type: ignore[assignment]
        collect.mark_deleted_finals = real_mark  # type: ignore[assignment]
        clock.TARGETS = targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=os.path.join(ROOT, "studies", "quickstart.yaml"))
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for _ in range(args.runs):  # alternated, so drift on a shared machine hits both alike
        rows.append(("sqlite (as shipped)", study_overhead.run(args.study, 1)))
        with journal_storage():
            rows.append(("journal file + sqlite lineage", study_overhead.run(args.study, 1)))
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
