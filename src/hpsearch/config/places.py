"""The places a study writes to: its storage (a database URL or a sqlite file) and its checkpoint
directory (local or an fsspec URL). Each is resolved against the study file's directory and, for
the commands that train, probed by creating (and deleting) an empty file there, so that a place
that cannot be written stops the command before any training starts."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import Any

from hpsearch.config.schema import COMPRESSIONS, CheckpointSettings
from hpsearch.config.values import Bounds, Reader, clip, did_you_mean, show

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIX = ".journal"


def _local_path(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def read_storage(r: Reader, value: Any, base_dir: str, run_dir: str) -> str:
    if value is None:
        url = "sqlite:///" + os.path.join(run_dir, "study.db")
        _check_database_file(r, url[len("sqlite:///") :])
        return url
    url = r.string(value, "storage")
    if not _URL.match(url):
        if url.lower().endswith(_SQLITE_SUFFIXES):
            file = _local_path(base_dir, url)
            _check_database_file(r, file)
            return "sqlite:///" + file
        if url.lower().endswith(_JOURNAL_SUFFIX):
            return _journal(r, _local_path(base_dir, url))
        r.fail(
            "storage",
            f"must be a database URL (sqlite:///path/to/study.db, postgresql://user@host/db, ...), "
            f"a journal (journal:///path/to/study.journal) or a path ending in .db, .sqlite, "
            f".sqlite3 or .journal, got {show(url)}",
        )
    scheme, rest = url.split("://", 1)
    if scheme.lower() == "journal":
        file = rest[1:] if rest.startswith("/") else rest
        if not file or "?" in file:
            r.fail("storage", f"a journal URL is journal:///relative/path.journal or "
                              f"journal:////abs/path.journal, got {show(url)}")  # fmt: skip
        return _journal(r, _local_path(base_dir, file))
    if scheme.split("+")[0].lower() != "sqlite":
        return url
    if rest in ("", "/") or rest[1:].partition("?")[0] == ":memory:":
        r.fail(
            "storage",
            f"{show(url)} is an in-memory database: each connection (the study, its checkpoint "
            f"tree, every worker) would see its own empty database; give a file path, e.g. "
            f"sqlite:///runs/study.db (relative to the study file), or leave storage out",
        )
    if not rest.startswith("/"):
        r.fail(
            "storage",
            f"a sqlite URL is sqlite:///relative/path.db or sqlite:////abs/path.db, "
            f"got {show(url)}",
        )
    file, q, query = rest[1:].partition("?")
    if not file.startswith("/"):
        file = _local_path(base_dir, file)
        url = f"{scheme}:///{file}{q}{query}"
    _check_database_file(r, file)
    return url


def _journal(r: Reader, file: str) -> str:
    """A journal storage: Optuna's study in `file`, the lineage in a SQLite file beside it
    (hpsearch.lineage.journal), both on a local file system (checked when it is opened)."""
    _check_database_file(r, file)
    _check_database_file(r, file + ".lineage.db")
    return "journal:///" + file


def _check_database_file(r: Reader, file: str) -> None:
    """The sqlite file can be opened or created: sqlite writes the file and, in WAL mode, two
    more beside it, so its directory must take new files."""
    fix = "point storage at a directory you can write, e.g. storage: runs/study.db"
    if os.path.isdir(file):
        r.fail("storage", f"{show(file)} is a directory, not a database file; {fix}")
    if os.path.exists(file) and not os.access(file, os.R_OK | os.W_OK):
        r.fail("storage", f"the database {show(file)} cannot be read and written; {fix}")
    problem = _cannot_create_in(os.path.dirname(file)) if r.writable else None
    if problem:
        r.fail("storage", f"cannot create the database {show(file)}: {problem}; {fix}")


def _cannot_create_in(directory: str) -> str | None:
    """Why no file can be created in `directory` (made on demand if missing), or None.

    The test is an empty file created and deleted in `directory`, or, if it does not exist yet,
    in its nearest existing parent. Creating the missing directories here and removing them again
    would race with another process (a second worker) that is creating them for real."""
    d = directory
    while not os.path.lexists(d):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    if not os.path.isdir(d):
        kind = "a file" if os.path.isfile(d) else "not a directory"
        return f"{show(d)} is {kind}, so nothing can be created in it"
    try:
        fd, probe = tempfile.mkstemp(prefix=".hpsearch-probe-", dir=d)
    except OSError as e:
        return f"{show(d)} does not take new files ({e.strerror or type(e).__name__})"
    os.close(fd)
    with contextlib.suppress(OSError):  # an empty dot-file left behind harms nothing
        os.unlink(probe)
    return None


def read_checkpoints(
    r: Reader, value: Any, base_dir: str, run_dir: str, name: str
) -> CheckpointSettings:
    allowed = ("dir", "every", "every_steps", "keep_best", "compression", "async",
               "storage_options", "cache_dir", "cache_max_gib")  # fmt: skip
    section = r.mapping(value, "checkpoints", allowed, optional=True)
    directory = os.path.join(run_dir, "checkpoints")
    if "dir" in section:
        directory = r.string(section["dir"], "checkpoints.dir")
        if not _URL.match(directory):
            directory = _local_path(base_dir, directory)
    _check_checkpoint_dir(r, directory, name)
    every: float | None = 1.0
    every_steps: int | None = None
    which = r.exactly_one(section, "checkpoints", "every", "every_steps", required=False)
    if which == "every":
        every = r.epochs(section["every"], "checkpoints.every", "between checkpoints")
    elif which == "every_steps":
        every = None
        every_steps = r.steps(
            section["every_steps"], "checkpoints.every_steps", "between checkpoints"
        )
    max_gib = r.real(section.get("cache_max_gib", 20), "checkpoints.cache_max_gib", Bounds(gt=0))
    return CheckpointSettings(
        dir=directory,
        every=every,
        every_steps=every_steps,
        keep_best=r.integer(section.get("keep_best", 3), "checkpoints.keep_best", Bounds(ge=1)),
        compression=r.choice(
            section.get("compression", "none"), "checkpoints.compression", COMPRESSIONS
        ),
        async_save=r.boolean(section.get("async", True), "checkpoints.async"),
        storage_options=_storage_options(r, section.get("storage_options"), directory),
        cache_dir=_cache_dir(r, section, base_dir, remote=_is_remote(directory)),
        cache_max_bytes=max(1, int(max_gib * (1 << 30))),
    )


def _is_remote(directory: str) -> bool:
    return bool(_URL.match(directory)) and directory.split("://", 1)[0].lower() not in (
        "file",
        "local",
    )


def _storage_options(r: Reader, value: Any, directory: str) -> dict[str, Any]:
    """fsspec's keyword arguments for a URL `dir`, as written (values are never shown in a
    message: they hold credentials)."""
    key = "checkpoints.storage_options"
    if value is None:
        return {}
    example = "{endpoint_url: http://127.0.0.1:9000, key: ..., secret: ...}"
    if not isinstance(value, dict):
        r.fail(key, f"must be a mapping of fsspec options, e.g. {example}; got a "
                    f"{type(value).__name__}")  # fmt: skip
    for k in value:
        if not isinstance(k, str) or not k.isidentifier():
            r.fail(key, f"option names must be identifiers (fsspec keyword arguments), "
                        f"got {show(k)}")  # fmt: skip
    if value and not _is_remote(directory):
        r.fail(key, f"options are passed to fsspec for a URL checkpoints.dir (s3://bucket/"
                    f"prefix, ...), but checkpoints go to the local directory {show(directory)}; "
                    f"remove storage_options or set dir to a URL")  # fmt: skip
    return dict(value)


def _cache_dir(r: Reader, section: dict[str, Any], base_dir: str, *, remote: bool) -> str | None:
    """Where verified files of a remote store are cached: `cache_dir` (false: no cache); by
    default `$XDG_CACHE_HOME/hpsearch` (or ~/.cache/hpsearch) for a remote store, none for a
    local directory, which is read at disk speed anyway."""
    key = "checkpoints.cache_dir"
    value = section.get("cache_dir", None if "cache_dir" in section else remote)
    if value is False or value is None:
        return None
    if value is True:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        return os.path.join(os.path.expanduser(cache), "hpsearch")
    written = r.string(value, key)
    if _URL.match(written):
        r.fail(key, f"must be a local directory (or false for no cache), got {show(written)}")
    directory = _local_path(base_dir, written)
    problem = _cannot_create_in(directory) if r.writable else None
    if problem:
        r.fail(key, f"cannot cache checkpoints under {show(directory)}: {problem}; name a "
                    f"directory you can write, or cache_dir: false")  # fmt: skip
    return directory


def _check_checkpoint_dir(r: Reader, directory: str, name: str) -> None:
    """Checkpoints can be written there: a known fsspec protocol whose package is installed, or
    a local directory (made on demand) that takes new files. Checked now, not at the first save
    after the warm-up."""
    key = "checkpoints.dir"
    if _URL.match(directory):
        protocol, rest = directory.split("://", 1)
        if protocol.lower() not in ("file", "local"):
            _check_protocol(r, protocol, directory)
            return
        directory = rest
    fix = "name a directory you can write (it is created if missing)"
    if os.path.exists(directory) and not os.path.isdir(directory):
        r.fail(key, f"{show(directory)} is a file, not a directory; {fix}")
    problem = _cannot_create_in(directory) if r.writable else None
    if problem:
        r.fail(key, f"cannot write checkpoints under {show(directory)}: {problem}; {fix}")
    # The study's own folder is the store's root: only looked at, never written here, because
    # the store decides whether an existing root is its own.
    root = os.path.join(directory, name)
    if os.path.lexists(root) and not os.path.isdir(root):
        r.fail(key, f"{show(root)} (the study's folder in it) is a file, not a directory; {fix}")
    if r.writable and os.path.isdir(root) and not os.access(root, os.W_OK | os.X_OK):
        r.fail(key, f"the study's folder {show(root)} cannot be written; {fix}")


def _check_protocol(r: Reader, protocol: str, url: str) -> None:
    import fsspec  # only for URLs
    from fsspec.registry import known_implementations

    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        known = fsspec.available_protocols()
        r.fail(
            "checkpoints.dir",
            f"{show(url)}: fsspec knows no protocol {show(protocol)}"
            f"{did_you_mean(protocol, known)}; use a local directory or a URL such as "
            f"s3://bucket/prefix, gs://bucket/prefix, file:///path",
        )
    except ImportError as e:
        impl = known_implementations.get(protocol, {})
        package = str(impl.get("class", "")).split(".")[0]
        install = f"pip install {package}" if package else clip(str(e))
        r.fail(
            "checkpoints.dir",
            f"{show(url)}: the {protocol}:// protocol needs the package {package or '?'}, "
            f"which is not installed ({clip(str(e))}); install it ({install}) or use a local "
            f"directory",
        )
