"""The architecture as a test: imports flow one way between the layers (docs/architecture.md),
the lower layers never import Optuna, and only the bridge touches Optuna's private API."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "hpsearch"

# a module may import from its own layer and the layers before it, never after
# integrations/ sit beside the user's task code: they import task, errors and console only
LAYERS = ["task", "errors", "console", "integrations", "config", "training", "checkpoint",
          "lineage", "search", "report", "cli", "api", "testing", "__init__",
          "__main__"]  # fmt: skip
RANK = {"task": 0, "errors": 0, "console": 0, "failpoints": 0,
        **{name: i for i, name in enumerate(LAYERS)}}  # fmt: skip
NO_OPTUNA = ("training", "checkpoint", "lineage")  # config builds samplers by name: it may
PRIVATE_OPTUNA = ("._storage", "._trial_id", "._thread_local", "._stop_flag", "optuna.trial.Trial(")


def _layer(path: pathlib.Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every `hpsearch.*` and `optuna` import of a module, at any depth (lazy ones too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
    return out


def test_imports_flow_one_way() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        mine = _layer(path)
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] == "optuna" and mine in NO_OPTUNA:
                wrong.append(f"{path.relative_to(SRC)}:{line} imports optuna")
            if parts[0] != "hpsearch" or len(parts) < 2:
                continue
            theirs = parts[1]
            if RANK[theirs] > RANK[mine]:
                wrong.append(f"{path.relative_to(SRC)}:{line} ({mine}) imports {module}")
    assert wrong == []


def test_private_optuna_only_in_the_bridge() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "optuna_bridge.py":
            continue
        text = path.read_text()
        wrong += [f"{path.relative_to(SRC)}: {p}" for p in PRIVATE_OPTUNA if p in text]
    assert wrong == []


def test_reading_a_study_file_does_not_import_torch() -> None:
    code = "import sys, hpsearch.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
