"""The launch files in examples/ say what hpsearch's pre-emption contract needs: SIGTERM reaches the
worker and a worker stopped by it (exit 130, its trial checkpointed) is run again, not counted as
a failure; a mistake in the study file (exit 2) is not retried. The SLURM script ran for real on
a one-machine cluster (benchmarks/slurm_requeue.py, RESULTS.md); the Kubernetes manifest is
checked against the API's schemas when `kubernetes-validate` is installed (not in CI: 119 MB of
schemas); the Ray recipe is checked for what it promises without Ray (not in CI)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from studyutil import ROOT

EXAMPLES = os.path.join(ROOT, "examples")


def _read(*parts: str) -> str:
    with open(os.path.join(EXAMPLES, *parts)) as f:
        return f.read()


def test_the_slurm_array_requeues_a_stopped_task_and_runs_one_gpu_each() -> None:
    path = os.path.join(EXAMPLES, "slurm", "hpsearch-array.sbatch")
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    text = _read("slurm", "hpsearch-array.sbatch")
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)(?:=(\S+))?", text, re.M))
    assert directives["gres"] == "gpu:1" and "requeue" in directives
    assert re.fullmatch(r"B:TERM@\d+", directives["signal"])  # to the script, which forwards it
    assert directives["open-mode"] == "append"
    assert 'worker "$@" &' in text and "trap stop TERM" in text
    # requeue this task, not the whole array (the first task's SLURM_JOB_ID is the array's)
    assert "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" in text
    assert '"$code" -eq 130' in text and '"$code" -eq 143' in text  # stopped, or still starting


def _job() -> dict:
    with open(os.path.join(EXAMPLES, "kubernetes", "indexed-job.yaml")) as f:
        return yaml.safe_load(f)


def test_the_kubernetes_job_reruns_a_preempted_worker_and_fails_on_a_study_file_mistake() -> None:
    job = _job()
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert pod["terminationGracePeriodSeconds"] >= 30  # time to write the checkpoint
    (worker,) = pod["containers"]
    assert worker["command"][:2] == ["hpsearch", "worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    rules = {(r["action"], r.get("onExitCodes", {}).get("values", [None])[0]) for r in
             spec["podFailurePolicy"]["rules"]}  # fmt: skip
    assert {("Ignore", 130), ("FailJob", 2), ("Ignore", None)} <= rules
    disrupted = [r for r in spec["podFailurePolicy"]["rules"] if "onPodConditions" in r]
    assert disrupted[0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    names = {c["name"] for c in worker["env"] if "valueFrom" in c}
    assert "HPSEARCH_STORAGE" in names  # the database URL with its password: from a Secret


def test_the_kubernetes_job_fits_the_api_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for version in ("1.29.0", "1.37.0"):  # podFailurePolicy is GA from 1.31, beta in 1.29
        kv.validate(_job(), version, strict=True)  # raises on an unknown or missing field


def test_the_ray_recipe_runs_one_gpu_per_worker_and_retries_a_stopped_one() -> None:
    source = _read("ray", "hpsearch_ray.py")
    tree = ast.parse(source)
    task = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                and n.name == "hpsearch_worker")  # fmt: skip
    (decorator,) = task.decorator_list
    assert isinstance(decorator, ast.Call)
    kw = {k.arg: ast.unparse(k.value) for k in decorator.keywords}
    assert kw["num_gpus"] == "1" and kw["retry_exceptions"] == "[Stopped]"
    assert "code == 130" in source and '"worker"' in source
    if shutil.which("ray") is None:
        return
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, "ray", "hpsearch_ray.py"),
                           "--help"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_second_sigterm_still_stops_cleanly_and_a_second_ctrl_c_gives_up() -> None:
    """SLURM's requeue and pre-emption send SIGTERM to every process of the task, and the batch
    script forwards its own to the worker: the worker gets two. Before, the second one gave up
    on the clean stop ("hpsearch: interrupted": no checkpoint of the trial), as a second Ctrl-C
    does; found running benchmarks/slurm_requeue.py."""
    import signal

    from hpsearch.search.control import StopFlag

    flag = StopFlag()
    with flag.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
