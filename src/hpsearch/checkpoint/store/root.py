"""Whose root is this? The rule that keeps a store from deleting what hpsearch did not write.

A root is marked as hpsearch's by a small file, `.hpsearch-store`, written when a store first
writes there. A non-empty root without the mark is refused (ForeignStoreRoot), unless every entry
in it is named as hpsearch names its own and one of them at least is a committed checkpoint whose
manifest checks out: a root of an hpsearch from before the mark, adopted and marked. Names alone
are no evidence (anyone can make a folder `ck-deadbeef-00000000`, and adopting the root would
delete it as a torn save); a manifest under its id whose own hash matches is one only hpsearch
writes by accident.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hpsearch.checkpoint import hashing
from hpsearch.checkpoint.format import ID_RE, MANIFEST, decode_manifest
from hpsearch.checkpoint.store import reading
from hpsearch.checkpoint.store.backend import (
    DEL_RE,
    MARKER,
    MARKER_TEXT,
    NEW_ID_RE,
    TMP_RE,
    BlobBackend,
)
from hpsearch.checkpoint.store.protocol import ForeignStoreRoot
from hpsearch.errors import CheckpointError, CheckpointFormatError

log = logging.getLogger(__name__)


def check_root(backend: BlobBackend, *, claim: bool, saving: bool = False) -> bool:
    """Refuse (ForeignStoreRoot) a root that holds what hpsearch did not write; with `claim`,
    mark an empty or adoptable root ours. Returns whether the root is marked now. Only a save
    (`saving`) creates a root that does not exist yet."""
    entries = backend.entries()
    if entries is None:
        if saving:  # the first save creates the root, and marks it before anything else
            backend.write_marker(MARKER_TEXT)
            return True
        return False
    if any(name == MARKER for name, _ in entries):
        return True
    committed = {name for name, is_dir in entries if is_dir and _committed(backend, name)}
    foreign = sorted(
        name
        for name, is_dir in entries
        if not (
            TMP_RE.fullmatch(name)
            or DEL_RE.fullmatch(name)
            or (is_dir and NEW_ID_RE.fullmatch(name))
            or name in committed  # an id given to save(ckpt_id=...)
        )
    )
    if foreign:
        raise ForeignStoreRoot(_foreign_message(backend.url, foreign))
    if entries and not committed:
        raise ForeignStoreRoot(_unproven_message(backend.url, sorted(n for n, _ in entries)))
    if not claim:
        return False
    backend.write_marker(MARKER_TEXT)  # empty, or an older hpsearch's root: adopt
    if entries:
        log.info("adopted %s (%d hpsearch entries) and marked it", backend.url, len(entries))
    return True


def _committed(backend: BlobBackend, name: str) -> bool:
    """Whether `name` holds a manifest under its id whose own hash matches (one of a newer
    format counts: a newer hpsearch wrote it)."""
    if not ID_RE.fullmatch(name):
        return False
    try:
        raw = reading.read_small(backend, name, MANIFEST)
        decode_manifest(raw, name, backend.where(name, MANIFEST), hashing.HASHERS)
    except CheckpointFormatError:
        return True
    except (OSError, MemoryError, CheckpointError):
        return False
    return True


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _unproven_message(url: str, names: Sequence[str]) -> str:
    return (
        f"{url}: this directory holds entries named like hpsearch's ({_shown(names)}) but no "
        "committed hpsearch checkpoint, so nothing shows that hpsearch wrote them; hpsearch "
        "removes torn saves from its checkpoint directory, so it does not adopt it. Point "
        "checkpoints.dir at an empty or new directory, or move those entries away; if an "
        f"hpsearch from before the mark wrote them, create the file {MARKER} in it (hpsearch "
        "then deletes only names it generates there)."
    )


def _foreign_message(url: str, foreign: Sequence[str]) -> str:
    return (
        f"{url}: this directory holds files hpsearch did not write ({_shown(foreign)}). hpsearch "
        "removes torn saves from its checkpoint directory, so it does not use one that holds "
        "anything else. Point checkpoints.dir at an empty or new directory (checkpoints go to "
        "<checkpoints.dir>/<study name>), or move those entries away. A directory of an older "
        "hpsearch that holds only its checkpoints is adopted automatically; to adopt this one "
        f"as it is, create the file {MARKER} in it (hpsearch then deletes only names it "
        "generates there)."
    )
