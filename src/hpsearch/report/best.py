"""`hpsearch best --export DIR`: the best trial's weights and values as two files a user loads
without hpsearch, `model.safetensors` (`safetensors.torch.load_file`) and `params.json`.

The export writes only these two files, and never over one it did not write: each carries a mark
(`written_by` in params.json and in model.safetensors' metadata), and an existing file without it
is refused unless `force`. Each file is written under a temporary name and renamed into place, so
a link at either name is replaced, never written through, and an export that fails leaves the
files that were there whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from hpsearch.errors import HpsearchError, UsageError

if TYPE_CHECKING:
    from hpsearch.report.views import TrialView
    from hpsearch.search.session import Session

WRITTEN_BY = "hpsearch best --export"
MODEL, PARAMS = "model.safetensors", "params.json"
_MAX_HEAD = 16 << 20  # an export's header or params.json is far smaller; never read a big file


def check_export_dir(out_dir: str, *, force: bool) -> None:
    """Refuse, before anything is loaded, an export that could not be written or would replace a
    file the user made: `out_dir` a file, or one of the two files there not an export's (a
    directory at their name even with `force`). UsageError naming the file and the fix."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(
            f"--export {out_dir}: is a file, not a directory; name a directory (it is created "
            "if it does not exist)"
        )
    for name in (MODEL, PARAMS):
        path = os.path.join(out_dir, name)
        why = _not_ours(path)
        if why is None:
            continue
        if why == "is a directory":
            raise UsageError(f"--export {out_dir}: {path} is a directory; move it away")
        if not force:
            raise UsageError(
                f"--export {out_dir}: {path} {why}, and an export replaces only the files an "
                "export wrote; move it away, export to another directory, or add --force to "
                "replace it"
            )


def export_best(session: Session, best: TrialView, out_dir: str) -> None:
    """Write the best trial's final weights (every state-dict name, tied weights as copies, so
    `model.load_state_dict(load_file(...))` works as it is) and its values into `out_dir`.
    Call `check_export_dir` first."""
    from hpsearch.checkpoint.format import check_tensors
    from hpsearch.checkpoint.tensorfile import plan_file
    from hpsearch.training.state import expand_aliases

    if best.final_checkpoint is None:
        raise HpsearchError("the best trial's checkpoint is not kept: nothing to export")
    loaded = session.store.load(best.final_checkpoint, groups=("model",))
    named = expand_aliases(loaded.tensors["model"], loaded.state.get("model_aliases"))
    check_tensors({"model": named})
    meta = {"written_by": WRITTEN_BY, "study": session.study_name, "trial": str(best.number),
            "checkpoint": best.final_checkpoint}  # fmt: skip
    plan = plan_file(named, meta)  # the layout of safetensors' own save_file
    params = {
        "written_by": WRITTEN_BY,
        "trial": best.number,
        "value": best.value,
        "metric": session.settings.objective.metric,
        "params": best.params,
        "hparams": loaded.state.get("hparams"),
        "checkpoint": best.final_checkpoint,
        "study": session.study_name,
    }
    text = (json.dumps(params, indent=2) + "\n").encode("utf-8")
    try:
        os.makedirs(out_dir, exist_ok=True)

        def write_model(f: BinaryIO) -> None:
            for part in (memoryview(plan.header), *plan.parts):
                f.write(part)

        _replace(out_dir, MODEL, write_model)
        _replace(out_dir, PARAMS, lambda f: f.write(text))
    except OSError as exc:
        where = exc.filename or out_dir
        why = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
                         errno.EEXIST):  # fmt: skip
            raise UsageError(f"--export {out_dir}: cannot write {where}: {why}") from None
        raise HpsearchError(f"--export {out_dir}: writing {where} failed: {why}") from None


def _replace(out_dir: str, name: str, write: Callable[[BinaryIO], Any]) -> None:
    """Write `name` under a temporary name of its own, then rename it over `name`: the rename
    replaces a link, never what it points at. The file gets the mode the user's umask gives."""
    tmp = os.path.join(out_dir, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(out_dir, name))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _not_ours(path: str) -> str | None:
    """None if `path` does not exist or an export wrote it, else why it is the user's."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # not there (the write will say why not)
        return None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            mark = _model_mark(f) if path.endswith(MODEL) else _params_mark(f)
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, nested too deep
        mark = None
    return None if mark == WRITTEN_BY else f"exists and was not written by `{WRITTEN_BY}`"


def _params_mark(f: BinaryIO) -> Any:
    data = f.read(_MAX_HEAD + 1)
    if len(data) > _MAX_HEAD:
        return None
    doc = json.loads(data)
    return doc.get("written_by") if isinstance(doc, dict) else None


def _model_mark(f: BinaryIO) -> Any:
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_HEAD:
        return None
    header = json.loads(f.read(n))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta.get("written_by") if isinstance(meta, dict) else None
