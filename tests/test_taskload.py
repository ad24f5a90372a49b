"""Loading the user's Task: real files in a temp dir, imported for real."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpsearch.config.taskload import load_task, overrides
from hpsearch.errors import TaskError, UsageError
from hpsearch.task import REQUIRED_METHODS, Task

GOOD = """\
from hpsearch.task import Task


class Good(Task):
    def datasets(self): return [], []
    def model(self, hparams): return None
    def optimizer(self, model, hparams): return None
    def loss(self, model, batch): return 0.0
    def evaluate(self, model, loader): return {}
"""


@pytest.fixture(autouse=True)
def clean_imports() -> Iterator[None]:
    """The modules these tests write leave sys.modules, and the loader leaves sys.path, as found."""
    path = list(sys.path)
    yield
    for name in list(sys.modules):
        if name.startswith(("_hpsearch_task_", "hp_", "digits_helpers")):
            del sys.modules[name]
    assert sys.path == path  # the loader put the file's directory back


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def error_of(spec: str, **kwargs: Any) -> str:
    with pytest.raises(TaskError) as info:
        load_task(spec, **kwargs)
    assert isinstance(info.value, UsageError)  # exit status 2 in the CLI
    return str(info.value)


def test_a_task_file_can_import_the_module_next_to_it(tmp_path: Path) -> None:
    write(tmp_path / "tasks", "digits_helpers.py", "HIDDEN = 17\n")
    write(
        tmp_path / "tasks",
        "digits.py",
        GOOD
        + "\nimport digits_helpers\n\nclass Digits(Good):\n    hidden = digits_helpers.HIDDEN\n",
    )
    study = tmp_path / "study.yaml"  # need not exist: only its directory matters
    cls = load_task("tasks/digits.py:Digits", study_path=str(study))
    assert issubclass(cls, Task)
    assert cls.__name__ == "Digits"
    assert cls.hidden == 17
    assert sys.modules[cls.__module__].__file__ == str(tmp_path / "tasks" / "digits.py")
    # The same file loads under the same module name (workers can unpickle by reference).
    again = load_task(str(tmp_path / "tasks" / "digits.py") + ":Digits")
    assert again.__module__ == cls.__module__


def test_a_relative_path_without_a_study_file_follows_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "mytask.py", GOOD)
    monkeypatch.chdir(tmp_path)
    assert load_task("mytask.py:Good").__name__ == "Good"


def test_a_module_path_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "hp_user_pkg", "__init__.py", "")
    write(tmp_path / "hp_user_pkg", "tasks.py", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = load_task("hp_user_pkg.tasks:Good")
    assert cls.__module__ == "hp_user_pkg.tasks"


def test_a_missing_file_names_the_resolved_path(tmp_path: Path) -> None:
    message = error_of("tasks/nope.py:Digits", study_path=str(tmp_path / "study.yaml"))
    assert message == (
        f"task 'tasks/nope.py:Digits': file not found: {tmp_path}/tasks/nope.py (a relative path "
        f"is resolved against the study file's directory, {tmp_path}); fix the path in `task:`"
    )


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    source = "from hpsearch.task import Task\n\nclass Broken(Task:\n    pass\n"
    path = write(tmp_path, "broken.py", source)
    with pytest.raises(SyntaxError) as compiled:
        compile(source, str(path), "exec")
    message = error_of(f"{path}:Broken")
    assert message == (
        f"task '{path}:Broken': importing {path} failed: SyntaxError: {compiled.value.msg} "
        f"(at {path}:3); fix the error in the task file"
    )
    assert "Traceback" not in message


def test_a_missing_import_says_what_to_install(tmp_path: Path) -> None:
    path = write(tmp_path, "needs.py", "import hp_not_installed_anywhere\n")
    assert error_of(f"{path}:Good") == (
        f"task '{path}:Good': importing {path} failed: ModuleNotFoundError: No module named "
        f"'hp_not_installed_anywhere' (at {path}:1); install the package that provides "
        f"'hp_not_installed_anywhere', or put hp_not_installed_anywhere.py next to the task file"
    )


def test_an_error_raised_while_importing_names_where(tmp_path: Path) -> None:
    write(tmp_path, "hp_bad_helper.py", "x = 1\nraise ValueError('no data in ./data')\n")
    path = write(tmp_path, "task.py", "import hp_bad_helper\n")
    assert error_of(f"{path}:Good") == (
        f"task '{path}:Good': importing {path} failed: ValueError: no data in ./data "
        f"(at {tmp_path}/hp_bad_helper.py:2); fix the error in the task file"
    )


def test_a_missing_module(tmp_path: Path) -> None:
    assert error_of("hp_no_such_pkg.tasks:Digits") == (
        "task 'hp_no_such_pkg.tasks:Digits': no module named 'hp_no_such_pkg.tasks'; install its "
        "package or put its directory on PYTHONPATH, or name a file instead: "
        "'path/to/file.py:Class'"
    )


@pytest.mark.parametrize("spec", ["digits.py", "digits.py:", ":Digits", "digits.py:not-a-name"])
def test_a_malformed_spec(spec: str) -> None:
    assert error_of(spec) == (
        f"task {spec!r}: must name a module or .py file and a class; write it as "
        f"'package.module:Class' or 'path/to/file.py:Class'"
    )


def test_a_missing_class_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path, "task.py", GOOD)
    assert error_of(f"{path}:Goood") == (
        f"task '{path}:Goood': {path} has no class 'Goood'; did you mean 'Good'? "
        f"(Task subclasses there: Good)"
    )
    path = write(tmp_path, "empty.py", "X = 1\n")
    assert error_of(f"{path}:Digits") == (
        f"task '{path}:Digits': {path} has no class 'Digits' (it defines none)"
    )


def test_not_a_task(tmp_path: Path) -> None:
    path = write(tmp_path, "task.py", "class Plain:\n    pass\n\nnumber = 3\n")
    assert error_of(f"{path}:Plain") == (
        f"task '{path}:Plain': Plain in {path} is not a subclass of hpsearch.Task; declare it as "
        f"`class Plain(hpsearch.Task):`"
    )
    assert error_of(f"{path}:number") == (
        f"task '{path}:number': number in {path} is not a class (it is of type int); name a "
        f"subclass of hpsearch.Task"
    )


def test_a_required_method_left_out(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "task.py",
        """\
        from hpsearch.task import Task

        class Partial(Task):
            def datasets(self): return [], []
            def model(self, hparams): return None
            def optimizer(self, model, hparams): return None
        """,
    )
    assert error_of(f"{path}:Partial") == (
        f"task '{path}:Partial': Partial in {path} does not implement loss, evaluate; a Task must "
        f"implement all of datasets, model, optimizer, loss, evaluate"
    )
    assert error_of("hpsearch.task:Task") == (
        "task 'hpsearch.task:Task': Task in module hpsearch.task does not implement "
        f"{', '.join(REQUIRED_METHODS)}; a Task must implement all of "
        f"{', '.join(REQUIRED_METHODS)}"
    )


def test_overrides_sees_methods_from_intermediate_bases() -> None:
    class Base(Task):
        def apply_hparams(self, model: Any, optimizer: Any, hparams: dict[str, Any]) -> None:
            pass

    class Child(Base):
        pass

    assert overrides(Child, "apply_hparams")
    assert not overrides(Child, "model")
    assert not overrides(Task, "apply_hparams")
    assert not overrides(Child, "no_such_method")
