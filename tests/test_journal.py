"""The journal storage (`storage: journal:///path.journal`): Optuna's study in a journal file, the
lineage in a SQLite file beside it, on a local file system. A study runs, resumes and is read by
Optuna's own `JournalStorage`; garbage collection's marks of deleted finals reach a finished
trial; a record torn by a killed writer is cut before the next append; a network file system is
refused. Kills at events run in tests/test_resume.py, a killed worker in test_worker_kill.py,
the lineage's rules in test_lineage_conformance.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.config import load_study_file
from hpsearch.errors import UsageError
from hpsearch.lineage import SqlLineage
from hpsearch.lineage.journal import check_journal_place, file_system_type, lineage_file
from hpsearch.search import optuna_bridge as bridge
from hpsearch.search.records import trial_attr
from hpsearch.search.session import Session
from studyutil import write_study

TRIALS = {"n": 4, "epochs": 1, "eval_every": 0.25}


def _study(tmp_path: Path, storage: str = "runs/j.journal", **kw: object) -> str:
    return write_study(tmp_path, name="j", storage=storage, trials=TRIALS,
                       checkpoints={"every": 0.5, "keep_best": 1}, **kw)  # fmt: skip


def test_a_study_on_a_journal_runs_resumes_and_optuna_reads_it(tmp_path: Path) -> None:
    path = _study(tmp_path)
    journal = str(tmp_path / "runs" / "j.journal")
    assert load_study_file(path).storage == "journal:///" + journal
    assert main(["run", path, "--trials", "2"]) == 0
    assert main(["run", path]) == 0  # resumed: two more
    assert os.path.exists(lineage_file(journal))
    s = Session.open(path, create=False)
    try:
        assert isinstance(s.study._storage, JournalStorage)
        assert isinstance(s.lineage, SqlLineage)
        assert str(s.lineage.engine.url) == "sqlite:///" + lineage_file(journal)
        trials = s.study.get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
        done = [a.trial for a in s.lineage.attempts() if a.status == "done" and a.trial >= 0]
        assert sorted(done) == [0, 1, 2, 3]
        best = s.study.best_trial
        # garbage collection kept one final and marked the others' on the finished trials, in
        # a journal record Optuna's replay alone would drop (a finished trial is read-only)
        marked = [t.number for t in trials if trial_attr(t, "final_checkpoint_deleted")]
        assert sorted(marked) == sorted(t.number for t in trials if t.number != best.number)
    finally:
        s.close()
    # Optuna's own storage on the same file sees the same study (users' scripts, the dashboard)
    plain = optuna.load_study(study_name="j", storage=JournalStorage(JournalFileBackend(journal)))
    assert plain.best_trial.number == best.number and len(plain.trials) == 4


def test_a_missing_journal_is_a_usage_error(tmp_path: Path, capsys) -> None:
    path = _study(tmp_path)
    assert main(["status", path]) == 2
    assert "no study journal at" in capsys.readouterr().err


def test_a_record_torn_by_a_killed_writer_is_cut_before_the_next_append(tmp_path: Path) -> None:
    """A writer SIGKILLed mid-append leaves the start of a record without its newline. Optuna's
    reader skips it while it is last; appended after, the next record glued onto it made every
    later read fail ("Invalid log format"), whoever reads."""
    path = _study(tmp_path)
    journal = tmp_path / "runs" / "j.journal"
    assert main(["run", path, "--trials", "2"]) == 0
    whole = journal.read_bytes()
    torn = b'{"op_code":5,"worker_id":"dead","trial_id":1,"sta'
    journal.write_bytes(whole + torn)
    assert main(["run", path]) == 0  # reads past the torn record, cuts it at its first append
    text = journal.read_bytes()
    assert text.startswith(whole) and torn not in text and text.endswith(b"\n")
    assert all(json.loads(line) for line in text.splitlines())
    plain = optuna.load_study(
        study_name="j", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    assert [t.state for t in plain.trials] == [TrialState.COMPLETE] * 4


def test_cut_torn_tail_keeps_whole_records(tmp_path: Path) -> None:
    f = tmp_path / "x.journal"
    for content, kept in [(b"", b""), (b"{}\n", b"{}\n"), (b"{}\n{", b"{}\n"), (b"{", b""),
                          (b"{}\n" + b"x" * 200_000, b"{}\n")]:  # fmt: skip
        f.write_bytes(content)
        assert bridge.cut_torn_tail(str(f)) == len(content) - len(kept)
        assert f.read_bytes() == kept


NFS = """\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
95 22 0:52 / /shared rw,relatime - nfs4 server:/export rw,vers=4.2
96 95 0:53 / /shared/local rw,relatime - xfs /dev/vdb rw
"""


def test_the_file_system_of_a_path_is_that_of_its_deepest_mount(tmp_path: Path) -> None:
    assert file_system_type("/shared/study.journal", NFS) == "nfs4"
    assert file_system_type("/shared/local/study.journal", NFS) == "xfs"
    assert file_system_type("/sharedx/study.journal", NFS) == "ext4"
    assert file_system_type(str(tmp_path / "a" / "b.journal")) is not None  # this machine's


def test_a_journal_on_a_file_system_that_is_not_local_is_refused(tmp_path: Path, capsys) -> None:
    """/proc stands for NFS here (a file system of another kind, on every Linux machine): the
    study is refused before anything is made, with what to do instead."""
    with pytest.raises(UsageError, match=r"proc file system.*local file system.*PostgreSQL"):
        check_journal_place("/proc/hpsearch/study.journal")
    path = _study(tmp_path)
    assert main(["run", path, "--storage", "journal:////proc/hpsearch/j.journal"]) == 2
    err = capsys.readouterr().err
    assert "optuna#5138" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
