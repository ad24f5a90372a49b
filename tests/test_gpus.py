"""One GPU per worker, without a GPU: the placement rule, the `gpus:` key and `--gpus`, and the
CUDA_VISIBLE_DEVICES that each process of a real `hpsearch run --workers 2` starts with."""

from __future__ import annotations

import os
import textwrap

import pytest

import hpsearch
from hpsearch.cli import main
from hpsearch.config import load_study_file
from hpsearch.console import BARS_ENV
from hpsearch.errors import HpsearchError, StudyFileError, UsageError
from hpsearch.search.placement import (
    CUDA_ENV,
    Placement,
    parse_gpus,
    place_workers,
    visible_gpus,
    worker_env,
)
from studyutil import write_study


def place(workers, *, gpus=None, inherited=None, count=4, device="cuda"):
    return place_workers(workers, device=device, gpus=gpus, inherited=inherited,
                         count=lambda: count)  # fmt: skip


def test_each_worker_gets_its_own_gpu():
    assert place(3) == Placement(("0", "1", "2"))
    assert place(2, gpus=[3, 1]) == Placement(("3", "1"))
    assert place(1, gpus=[2]) == Placement(("2",))  # one worker, placed as asked
    assert place(2, gpus=[0, 0]) == Placement(("0", "0"))  # a GPU listed twice takes two
    # an inherited CUDA_VISIBLE_DEVICES is what this process sees: gpus pick from it by position
    assert place(2, inherited="4,6,9") == Placement(("4", "6"))
    assert place(2, gpus=[2, 0], inherited="4, 6,9") == Placement(("9", "4"))
    assert place(2, inherited="GPU-aa,GPU-bb", count=0).devices == ("GPU-aa", "GPU-bb")
    assert visible_gpus("3,-1,5", lambda: 8) == ["3"]  # CUDA stops reading at -1
    assert visible_gpus(None, lambda: 2) == ["0", "1"]


def test_nothing_is_placed_unless_device_is_cuda_and_there_is_something_to_place():
    assert place(1) is None  # one worker, no gpus: the environment is left alone
    assert place(4, device="cpu") is None
    assert place(4, device="cuda:1") is None  # one named GPU for every worker
    needs = "--gpus places each worker on a GPU, which needs device: cuda in the study file"
    with pytest.raises(UsageError, match=f"{needs}, got device: cpu"):
        place(2, gpus=[0], device="cpu")


def test_fewer_gpus_than_workers_share_them_round_robin_with_a_warning():
    plan = place(5, count=2)
    assert plan.devices == ("0", "1", "0", "1", "0")
    assert plan.warning == (
        "warning: 5 workers on 2 GPU(s) (0, 1): they share them round-robin (worker i on GPU "
        "i mod 2), with each GPU's memory; use --workers 2 for one each"
    )
    assert place(2, count=2).warning is None


def test_a_trial_of_several_ranks_takes_a_group_of_gpus_per_worker():
    def ranks(workers, k, **kw):
        return place_workers(workers, device="cuda", gpus=kw.get("gpus"), inherited=None,
                             count=lambda: kw.get("count", 4), per_worker=k)  # fmt: skip

    assert ranks(2, 2) == Placement(("0,1", "2,3"))
    assert ranks(1, 2, gpus=[3, 1]) == Placement(("3,1",))  # in the order given
    shared = ranks(3, 2)
    assert shared.devices == ("0,1", "2,3", "0,1")
    assert shared.warning is not None and "groups of 2 GPUs" in shared.warning
    with pytest.raises(UsageError, match=r"trials\.processes: 4 trains each trial on 4 GPUs"):
        ranks(1, 4, gpus=[0, 1])


def test_no_gpu_or_a_gpu_that_is_not_there_is_refused():
    with pytest.raises(UsageError) as err:
        place(2, count=0)
    assert str(err.value) == (
        "device: cuda with 2 worker(s), but this process sees no GPU "
        "(torch.cuda.device_count()=0); run on a machine with a GPU, or set device: cpu"
    )
    with pytest.raises(UsageError, match=r"\(CUDA_VISIBLE_DEVICES=\)"):
        place(2, inherited="")
    with pytest.raises(UsageError) as err:
        place(2, gpus=[1, 3], inherited="5,7")
    assert str(err.value) == (
        "gpus: 3 is not a GPU this process sees: it sees 2 (0=5, 1=7); list indices below that"
    )


def test_gpus_on_the_command_line_and_in_the_study_file(tmp_path):
    assert parse_gpus("0,1, 3") == (0, 1, 3)
    for bad in ("", "0,,1", "a", "-1"):
        with pytest.raises(UsageError, match="must be GPU indices separated by commas"):
            parse_gpus(bad)
    assert load_study_file(write_study(tmp_path, device="cuda", gpus=[0, 2])).gpus == (0, 2)
    assert load_study_file(write_study(tmp_path, device="cuda")).gpus is None
    path = os.path.join(tmp_path, "tiny.yaml")
    cases = {
        "gpus: places each worker on a GPU, which needs device: cuda, got device: cpu; set "
        "device: cuda, or remove gpus": {"gpus": [0]},
        "gpus: must be a list of GPU indices (integers >= 0) such as [0, 1, 3], got [0, -1]": {
            "gpus": [0, -1], "device": "cuda",
        },
        "gpus: must be a list of GPU indices (integers >= 0) such as [0, 1, 3], got []": {
            "gpus": [], "device": "cuda",
        },
    }  # fmt: skip
    for message, keys in cases.items():
        with pytest.raises(StudyFileError) as err:
            load_study_file(write_study(tmp_path, **keys))
        assert str(err.value) == f"{path}: {message}"


def test_worker_env_is_this_process_environment_with_the_workers_gpu():
    base = {"PATH": "/bin", CUDA_ENV: "4,6"}
    plan = Placement(("6", "4"))
    assert worker_env(plan, 1, base) == {"PATH": "/bin", CUDA_ENV: "4"}
    assert worker_env(None, 1, base) == base and base[CUDA_ENV] == "4,6"


# Records the CUDA_VISIBLE_DEVICES of the process that loads it, then stops that process with a
# task error before anything needs a GPU: the placement is seen without one.
TASK = """
import os
from digits import DigitsMLP
from hpsearch.errors import TaskError


class Recorder(DigitsMLP):
    def datasets(self):
        with open(os.environ["GPU_LOG"], "a") as f:
            f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES')}\\n")
        raise TaskError("recorded; stopping here, this machine has no GPU")
"""


@pytest.mark.parametrize("entry", ["cli", "api"])
def test_each_worker_process_really_starts_with_its_gpu(entry, tmp_path, monkeypatch, capsys):
    """`hpsearch run --workers 2 --gpus 2,0`, and `hpsearch.run(..., workers=2, gpus="2,0")`
    from Python, which runs the same code."""
    (tmp_path / "task.py").write_text(textwrap.dedent(TASK))
    examples = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([examples, os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "gpus.log"
    monkeypatch.setenv("GPU_LOG", str(log))
    monkeypatch.setenv(CUDA_ENV, "4,6,9")  # inherited: the run narrows it per worker
    path = write_study(tmp_path, task="task.py:Recorder", device="cuda")
    if entry == "cli":
        assert main(["run", path, "--workers", "2", "--gpus", "2,0"]) == 2  # the task's error
    else:
        with pytest.raises(HpsearchError, match="recorded; stopping here"):
            hpsearch.run(config=path, workers=2, gpus="2,0")
    out, err = capsys.readouterr()
    assert "CUDA_VISIBLE_DEVICES per worker: worker 0 on GPU 9, worker 1 on GPU 4" in out
    assert "warning" not in err
    seen = dict(line.split() for line in log.read_text().splitlines())
    assert seen.pop(str(os.getpid())) == "9"  # this process is worker 0
    assert list(seen.values()) == ["4"]  # and a process of its own
    # and put back once the run is over: a process that goes on (this test, a notebook) must
    # not leave later runs on worker 0's GPU or without progress bars
    assert os.environ[CUDA_ENV] == "4,6,9" and BARS_ENV not in os.environ
