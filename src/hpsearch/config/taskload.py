"""Load the user's `hpsearch.Task` subclass named by a study file's `task:`.

    cls = load_task("examples/digits.py:DigitsMLP", study_path="studies/digits.yaml")
    cls = load_task("mypackage.tasks:DigitsMLP")

Every problem (missing file, an error while importing, a missing or wrong class, a required method
left out) is one `TaskError` whose message says what is wrong and how to fix it; the original
exception is chained for debugging but its traceback is not part of the message.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from types import ModuleType

from hpsearch.errors import TaskError
from hpsearch.task import REQUIRED_METHODS, Task

__all__ = ["load_task", "overrides"]

_FORM = "write it as 'package.module:Class' or 'path/to/file.py:Class'"


def load_task(spec: str, *, study_path: str | os.PathLike[str] | None = None) -> type[Task]:
    """Import and check the Task class named by `spec`.

    `spec` is "package.module:Class" (imported with importlib, so it must be on sys.path) or
    "path/to/file.py:Class". A relative file path is resolved against the directory of
    `study_path`, or the current directory without one. A file is imported under a module name
    derived from its absolute path, with its directory on sys.path while it is imported, so it can
    import the modules next to it; a file inside a package (its directory has an __init__.py) is
    imported by its dotted name, with the directory above its top package on sys.path, so its
    relative imports work.
    """
    module_name, sep, cls_name = spec.rpartition(":")
    if not sep or not module_name or not cls_name.isidentifier():
        raise TaskError(f"task {spec!r}: must name a module or .py file and a class; {_FORM}")
    if module_name.endswith(".py"):
        file = _resolve(spec, module_name, study_path)
        module = _import_file(spec, file)
        where = file
    else:
        if not all(part.isidentifier() for part in module_name.split(".")):
            raise TaskError(
                f"task {spec!r}: {module_name!r} is neither a module path nor a .py file; {_FORM}"
            )
        module = _import_module(spec, module_name)
        where = f"module {module_name}"
    return _check_class(spec, module, cls_name, where)


def overrides(task_cls: type, method_name: str) -> bool:
    """Whether `task_cls` (or a base between it and Task) defines its own `method_name`."""
    for klass in task_cls.__mro__:
        if method_name in vars(klass):
            return klass is not Task and klass is not object
    return False


def _resolve(spec: str, path: str, study_path: str | os.PathLike[str] | None) -> str:
    if study_path is not None:
        base = os.path.dirname(os.path.abspath(os.fspath(study_path)))
        against = "the study file's directory"
    else:
        base = os.getcwd()
        against = "the current directory"
    file = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    if not os.path.isfile(file):
        raise TaskError(
            f"task {spec!r}: file not found: {file} (a relative path is resolved against "
            f"{against}, {base}); fix the path in `task:`"
        )
    return file


def _module_name(file: str) -> str:
    # Stable for a path, so a worker process that loads the same file gets the same name and
    # classes pickle by reference; distinct for two files with the same stem.
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(file))[0])
    digest = hashlib.sha1(file.encode("utf-8")).hexdigest()[:10]
    return f"_hpsearch_task_{stem}_{digest}"


def _package_of(file: str) -> tuple[str, str] | None:
    """(the directory that holds its top package, its dotted name) for a file inside a package
    (its directory has an __init__.py), else None."""
    directory, stem = os.path.split(os.path.splitext(file)[0])
    parts = [] if stem == "__init__" else [stem]
    inside = False
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        directory, package = os.path.split(directory)
        if not package.isidentifier():
            return None
        parts.insert(0, package)
        inside = True
    return (directory, ".".join(parts)) if inside and all(p.isidentifier() for p in parts) else None


def _import_file(spec: str, file: str) -> ModuleType:
    package = _package_of(file)
    if package is not None:  # by its package name: its relative imports need the package
        root, dotted = package
        added = root not in sys.path
        if added:
            sys.path.insert(0, root)
        try:
            return _import_module(spec, dotted)
        finally:
            if added:
                _remove_path(root)
    name = _module_name(file)
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise TaskError(f"task {spec!r}: cannot import {file} as a Python module; {_FORM}")
    module = importlib.util.module_from_spec(module_spec)
    directory = os.path.dirname(file)
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    sys.modules[name] = module  # dataclasses and pickle look the module up while it runs
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(name, None)
        raise TaskError(
            f"task {spec!r}: importing {file} failed: {_describe(e)}; {_fix(e, 'task file')}"
        ) from e
    finally:
        if added:
            _remove_path(directory)
    return module


def _import_module(spec: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise TaskError(
                f"task {spec!r}: no module named {module_name!r}; install its package or put its "
                f"directory on PYTHONPATH, or name a file instead: 'path/to/file.py:Class'"
            ) from e
        raise TaskError(
            f"task {spec!r}: importing {module_name} failed: {_describe(e)}; {_fix(e, 'module')}"
        ) from e
    except (Exception, SystemExit) as e:
        raise TaskError(
            f"task {spec!r}: importing {module_name} failed: {_describe(e)}; {_fix(e, 'module')}"
        ) from e


def _describe(e: BaseException) -> str:
    """The exception's type and message, and where it was raised, in one line."""
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (at {e.filename}:{e.lineno})"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{at}"


def _fix(e: BaseException, what: str) -> str:
    if isinstance(e, ModuleNotFoundError) and e.name:
        return (
            f"install the package that provides {e.name!r}, or put {e.name}.py next to the "
            f"task file"
        )
    return f"fix the error in the {what}"


def _remove_path(directory: str) -> None:
    if sys.path and sys.path[0] == directory:
        del sys.path[0]
    elif directory in sys.path:
        sys.path.remove(directory)


def _check_class(spec: str, module: ModuleType, cls_name: str, where: str) -> type[Task]:
    obj = getattr(module, cls_name, None)
    if obj is None and module.__name__ == "__main__":
        raise TaskError(
            f"task {spec!r}: the class was defined in __main__ (a notebook, or a script run "
            "directly), which no other process can import; move it into a .py file and name "
            f"that instead (task: 'path/to/file.py:{cls_name}', or hpsearch.run(task=...) with "
            "the class imported from it)"
        )
    if obj is None:
        classes = [n for n, v in vars(module).items() if isinstance(v, type) and n[:1] != "_"]
        tasks = [
            n for n in classes if issubclass(vars(module)[n], Task) and vars(module)[n] is not Task
        ]
        close = difflib.get_close_matches(cls_name, classes, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        found = f"Task subclasses there: {', '.join(tasks)}" if tasks else "it defines none"
        raise TaskError(f"task {spec!r}: {where} has no class {cls_name!r}{hint} ({found})")
    if not isinstance(obj, type):
        raise TaskError(
            f"task {spec!r}: {cls_name} in {where} is not a class (it is of type "
            f"{type(obj).__name__}); name a subclass of hpsearch.Task"
        )
    if not issubclass(obj, Task):
        raise TaskError(
            f"task {spec!r}: {cls_name} in {where} is not a subclass of hpsearch.Task; declare "
            f"it as `class {cls_name}(hpsearch.Task):`"
        )
    missing = [m for m in REQUIRED_METHODS if not overrides(obj, m)]
    if "loss" in missing and overrides(obj, "training_step"):
        missing.remove("loss")  # training_step replaces loss
    if missing:
        raise TaskError(
            f"task {spec!r}: {cls_name} in {where} does not implement {', '.join(missing)}; "
            f"a Task must implement all of {', '.join(REQUIRED_METHODS)}"
        )
    return obj
