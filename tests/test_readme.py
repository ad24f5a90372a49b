"""The docs against the code: the README's own task and study file run as written (on a smaller
budget), its test command is what CI runs, every flag the docs give a command exists, and every
key the study-file reader accepts is in the study file's reference."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpsearch.cli import _parser, main
from hpsearch.config.reader import load_study_mapping
from hpsearch.errors import StudyFileError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARK = re.compile(r"<!-- readme-test: (?P<name>[\w.-]+) -->\s*```\w*\n(?P<body>.*?)```", re.S)


def _marked_blocks() -> dict[str, str]:
    """The README's code blocks marked `<!-- readme-test: FILE -->`, by file name."""
    return {m["name"]: m["body"] for m in MARK.finditer(README.read_text(encoding="utf-8"))}


def test_the_readmes_task_and_study_file_run_as_written(tmp_path: Path) -> None:
    """What a new user copies: the task and the study file from the README's first screens,
    changed only to a smaller budget; the run ends with a winner and exit 0, and the winner
    replays bit for bit."""
    blocks = _marked_blocks()
    assert set(blocks) == {"my_task.py", "my_study.yaml"}
    (tmp_path / "my_task.py").write_text(blocks["my_task.py"])
    doc = yaml.safe_load(blocks["my_study.yaml"])
    assert doc["task"] == "my_task.py:MyTask"
    doc["trials"].update(budget=1.5, epochs=1)  # 5 nodes of a few steps each
    study = tmp_path / "my_study.yaml"
    study.write_text(yaml.safe_dump(doc))
    assert main(["run", str(study)]) == 0
    assert main(["replay", str(study)]) == 0


def test_the_readmes_test_command_is_the_one_ci_runs() -> None:
    """`.ci/run` runs exactly the README's test command (after installing what it needs)."""
    first = README.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    tests = next(line for line in first.splitlines() if "pytest" in line)
    command = tests.split("&&", 1)[1].split("#", 1)[0].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci
    assert "pip install -e '.[test]'" in tests and any(".[test]" in line for line in ci)


_COMMAND = re.compile(
    r"hpsearch (run|resume|worker|status|tree|plot|export|best|replay|gc|verify|check-resume)"
    r"\b([^`\n]*)"
)
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-o)(?![\w-])")


def _flags_by_command() -> dict[str, set[str]]:
    subparsers = next(a for a in _parser()._actions if a.dest == "command")
    return {name: set(p._option_string_actions) for name, p in subparsers.choices.items()}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_flag_the_docs_give_a_command_exists(page: Path) -> None:
    known = _flags_by_command()
    wrong = []
    for match in _COMMAND.finditer(page.read_text(encoding="utf-8")):
        command, rest = match[1], match[2]
        wrong += [f"hpsearch {command} {flag}" for flag in _FLAG.findall(rest)
                  if flag not in known[command]]  # fmt: skip
    assert wrong == []


def _allowed(doc: dict[str, Any], section: list[str]) -> list[str]:
    """The keys the reader accepts at `section`, read from its message for an unknown key."""
    doc = copy.deepcopy(doc)
    place = doc
    for key in section:
        place = place.setdefault(key, {})
    place["zz_unknown"] = 1
    with pytest.raises(StudyFileError) as caught:
        load_study_mapping(doc, base_dir=str(ROOT), writable=False)
    found = re.search(r"allowed here: ([^)]*)\)", str(caught.value))
    assert found is not None, str(caught.value)
    return [k.strip() for k in found[1].split(",")]


def test_every_key_the_reader_accepts_is_in_the_study_file_reference() -> None:
    tree = {
        "name": "keys",
        "task": "examples/digits.py:DigitsMLP",
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "trials": {"epochs": 1},
        "search_space": {"lr": {"float": [1e-3, 1e-1]}, "batch_size": {"categorical": [8]}},
        "schedule": {"name": "wsd"},
        "loggers": {"wandb": {"project": "p"}},
    }
    warmup = {**copy.deepcopy(tree), "warmup": {"epochs": 1, "hparams": {"lr": 0.01,
              "batch_size": 8}}, "trials": {"n": 1, "epochs": 1}}  # fmt: skip
    sections = [[], ["objective"], ["checkpoints"], ["tree"], ["trials"], ["data"], ["schedule"],
                ["training"], ["loggers"], ["loggers", "wandb"]]  # fmt: skip
    keys = {(".".join(s), k) for s in sections for k in _allowed(tree, s)}
    keys |= {("warmup", k) for k in _allowed(warmup, ["warmup"])}
    assert len(keys) > 50  # every section answered
    text = (ROOT / "docs" / "study-file.md").read_text(encoding="utf-8")
    missing = sorted(
        f"{section}.{key}".lstrip(".")
        for section, key in keys
        if f"`{key}`" not in text and f"`{section}.{key}`" not in text
    )
    assert missing == []


_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for a page's headings: lower case, punctuation dropped, spaces
    as hyphens."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_relative_link_finds_its_file_and_heading(page: Path) -> None:
    broken = []
    for match in _LINK.finditer(page.read_text(encoding="utf-8")):
        target = match["target"]
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        missing = not path.exists()
        if missing or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(target)
    assert broken == []
