"""A Hugging Face GPT-2 (examples/gpt2.py: built from GPT2Config, tied embeddings, no download)
through the ordinary Task API: `hpsearch run` of studies/gpt2.yaml cut to a few steps, the best
model back with its tied weights, and `hpsearch check-resume`."""

from __future__ import annotations

import os
import textwrap

import pytest
import yaml

pytest.importorskip("transformers")  # the `transformers` extra; imported once, it is slow

import hpsearch
from hpsearch.cli import main
from studyutil import ROOT


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("gpt2")
    task = tmp / "task.py"
    task.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, "examples")!r})
        from gpt2 import TinyGPT2

        class SmallGPT2(TinyGPT2):
            max_chars = 12_000  # 337 windows to train on, 38 to validate
    """)
    )
    with open(os.path.join(ROOT, "studies", "gpt2.yaml")) as f:
        doc = yaml.safe_load(f)
    doc.update(
        task=f"{task}:SmallGPT2",
        checkpoints={"every_steps": 4, "keep_best": 2},
        trials={"n": 2, "steps": 4, "eval_every_steps": 2},
        sampler={"name": "RandomSampler"}, pruner=None,
    )  # fmt: skip
    doc["warmup"]["steps"] = 8
    path = str(tmp / "gpt2.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    assert main(["run", path]) == 0
    return path


def test_gpt2_study_runs_and_gives_back_its_tied_model(study) -> None:  # type: ignore[no-untyped-def]
    with hpsearch.load(study) as s:
        frame = s.dataframe()
        assert list(frame["state"]) == ["COMPLETE", "COMPLETE"]
        assert all(0 < v < 4.85 for v in frame["value"])  # below ln(128): it learned something
        model = s.best_model()
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied after the load


def test_gpt2_resumes_exactly(study, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["check-resume", study, "--steps", "3"]) == 0
    assert capsys.readouterr().out.startswith("exact:")
