"""The journal storage's places: Optuna's study in an append-only journal file, the lineage in a
SQLite database beside it, both on one machine's local file system.

    storage: journal:///runs/study.journal      # relative to the study file
    storage: journal:////scratch/me/study.journal
    storage: runs/study.journal                 # the same as the first

The journal (Optuna's `JournalStorage`, opened by `search.optuna_bridge.open_journal`) is read
incrementally and appended to under an exclusive `flock` of `<journal>.lock`; the lineage is
`<journal>.lineage.db`, a SQLite database in WAL mode (`SqlLineage`). What that needs of the file
system, and why a network file system is refused:

- locks that exclude every process that writes and die with their holder: `flock` on a local
  file system. Optuna's own lock files are broken by force after 30 s by whoever waits, so a
  slow holder can lose its lock to a second writer;
- an append made under the lock visible, at the true end of the file, to the next holder: one
  page cache, i.e. one machine. An NFS client caches the file's size and pages, and a writer on
  another machine can append at a stale end over another's records: the corruption reported in
  optuna#5138 (a journal on NFS under SLURM);
- SQLite's WAL mode: a shared-memory index (`-shm`) that every process maps, so every process on
  one machine and a file system whose locks SQLite can trust (not NFS: the SQLite FAQ).

So workers on one machine (a GPU node with 8 GPUs, `hpsearch run --workers 8`) share a journal
on a local disk or tmpfs; workers on several machines share a PostgreSQL database.
"""

from __future__ import annotations

import os

from hpsearch.errors import UsageError

SCHEME = "journal"
LINEAGE_SUFFIX = ".lineage.db"

# file systems of one machine, where flock, appends and SQLite's WAL behave as above
LOCAL_FILE_SYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs", "overlay",
     "bcachefs", "jfs", "reiserfs", "nilfs2", "apfs", "hfs"}
)  # fmt: skip


def journal_file(url: str) -> str | None:
    """The journal file of a `journal:///...` storage URL (None: not a journal URL)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != SCHEME:
        return None
    return rest[1:] if rest.startswith("/") else rest


def lineage_file(journal: str) -> str:
    """The lineage's SQLite database beside a journal file."""
    return journal + LINEAGE_SUFFIX


def lineage_url(url: str) -> str:
    """The SQLAlchemy URL of the lineage of a journal storage URL."""
    journal = journal_file(url)
    if journal is None:
        raise ValueError(f"not a journal storage URL: {url!r}")
    return "sqlite:///" + lineage_file(journal)


def file_system_type(path: str, mountinfo: str | None = None) -> str | None:
    """The type of the file system that holds `path` (or would hold it), as Linux's
    /proc/self/mountinfo (or `mountinfo`, its text) names it; None where that cannot be read."""
    d = os.path.realpath(path)  # the parts that exist, links resolved
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as f:
                mountinfo = f.read()
        except OSError:
            return None
    best, kind = "", None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        after = line.split(" - ", 1)[1].split()
        inside = d == point or d.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best) and after:
            best, kind = point, after[0]
    return kind


def check_journal_place(journal: str) -> None:
    """Refuse (UsageError) a journal on a file system that does not give what the module's
    docstring lists; a file system whose type cannot be read (not Linux) is let through."""
    kind = file_system_type(journal)
    if kind is None or kind in LOCAL_FILE_SYSTEMS:
        return
    raise UsageError(
        f"storage journal:///{journal}: the journal is on a {kind} file system; a journal "
        "storage needs a local file system of one machine (ext4, xfs, btrfs, tmpfs, ...): "
        "its appends, its lock and the SQLite lineage beside it are not safe on a network "
        "file system (a journal on NFS was corrupted by workers on several machines, "
        "optuna#5138). Put the journal on a local disk for workers on this machine, or use "
        "PostgreSQL (storage: postgresql://user@host/db) for workers on several machines"
    )
