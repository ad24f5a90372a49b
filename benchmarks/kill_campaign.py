"""The long kill campaign: SIGKILL a real `hpsearch run` many times, then compare with an
uninterrupted run of the same study file.

    python benchmarks/kill_campaign.py [--study studies/quickstart.yaml] [--kills 100] [--seed 0]

Each restart is killed at a random moment: somewhere in its work, while one of its checkpoints is
being written, or while it deletes checkpoints. After the kills the study is run to the end. The
script then checks what the test suite checks on a smaller study (tests/test_resume.py): every
trial finished, none running, none lost; each continued trial resumed from the newest checkpoint
it had committed; and the trials' params, values, intermediate values and final weights are
bitwise those of the uninterrupted run. It prints the figures: kills by moment, trials,
continuations, and the work recomputed (at most one checkpoint interval per kill).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy(study: str, workdir: str, keep_best: int) -> str:
    with open(study) as f:
        doc = yaml.safe_load(f)
    task_path, _, cls = doc["task"].rpartition(":")
    if task_path.endswith(".py"):
        doc["task"] = os.path.join(os.path.dirname(os.path.abspath(study)), task_path) + ":" + cls
    doc.setdefault("checkpoints", {})["keep_best"] = keep_best  # keep every final to compare
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, os.path.basename(study))
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def _cmd(path: str) -> list[str]:
    return [sys.executable, "-m", "hpsearch", "run", path]


def query(db: str, sql: str, *args: object) -> list[tuple]:
    if not os.path.exists(db):
        return []
    con = sqlite3.connect(db, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def until(proc: subprocess.Popen, cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if cond():
            return True
        time.sleep(0.002)
    return proc.poll() is None


def kill_at_random_moments(
    cmd: list[str],
    db: str,
    kills: int,
    rng: random.Random,
    *,
    work_s: float = 1.0,
    mark_s: float = 5.0,
    env: dict[str, str] | None = None,
) -> tuple[int, dict[str, int]]:
    """Start `cmd` (an `hpsearch run` on the study whose sqlite database is `db`) again and
    again, SIGKILLing each start at a random moment once it works: within `work_s` seconds of
    work, while one of its checkpoints is being written, or while it deletes checkpoints (each
    waited for up to `mark_s`). Stops after `kills` kills, or when a start finishes the study.
    Returns the kills made and how many of each moment."""
    made, moments = 0, {"work": 0, "saving": 0, "gc": 0}
    while made < kills:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        pid = proc.pid
        if not until(
            proc,
            lambda p=pid: query(db, "select 1 from hpsearch_attempts where pid=? and trial>=-1", p),
            120,
        ):
            break  # it finished the study
        moment = rng.choice(["work", "work", "saving", "gc"])
        if moment == "work":  # mid-step, mid-evaluation, between trials
            until(proc, lambda: False, rng.uniform(0.0, work_s))
        elif moment == "saving":  # while one of its checkpoints is being written
            until(
                proc,
                lambda p=pid: query(
                    db,
                    "select 1 from hpsearch_checkpoints c join hpsearch_attempts a on "
                    "c.attempt=a.token where a.pid=? and c.status='pending'",
                    p,
                ),
                mark_s,
            )
        else:  # while it deletes checkpoints
            until(
                proc,
                lambda: query(db, "select 1 from hpsearch_checkpoints where status='deleting'"),
                mark_s,
            )
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            made += 1
            moments[moment] += 1
        proc.wait()
    return made, moments


def _results(path: str) -> dict[int, tuple]:
    from hpsearch.search.session import ATTR, Session

    s = Session.open(path, create=False)
    out = {}
    for t in s.study.get_trials():
        final = t.user_attrs.get(ATTR + "final_checkpoint")
        weights = s.store.load(final).tensors["model"] if t.state.name == "COMPLETE" else None
        out[t.number] = (t.state.name, t.params, t.value, dict(t.intermediate_values), weights)
    s.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=os.path.join(ROOT, "studies", "quickstart.yaml"))
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="hpsearch-kills-")
    try:
        ref = _copy(args.study, os.path.join(work, "ref"), 10_000)
        t0 = time.monotonic()
        subprocess.run(_cmd(ref), check=True, stdout=subprocess.DEVNULL)
        print(f"uninterrupted run: {time.monotonic() - t0:.1f}s")
        path = _copy(args.study, os.path.join(work, "killed"), 10_000)
        from hpsearch.search.studyfile import load_study_file

        db = load_study_file(path).storage[len("sqlite:///") :]
        t0 = time.monotonic()
        kills, moments = kill_at_random_moments(_cmd(path), db, args.kills, rng)
        subprocess.run(_cmd(path), check=True, stdout=subprocess.DEVNULL)
        print(f"campaign: {kills} SIGKILLs {moments} in {time.monotonic() - t0:.1f}s")

        a, b = _results(ref), _results(path)
        bad = [n for n in a if n not in b or a[n][:4] != b[n][:4]]
        bad += [n for n in a if a[n][4] is not None and n not in bad
                and not all(torch.equal(a[n][4][k], b[n][4][k]) for k in a[n][4])]  # fmt: skip
        states = {s for s, *_ in b.values()}
        from hpsearch.search.session import Session

        s = Session.open(path, create=False)
        rows, attempts = s.lineage.checkpoints(), s.lineage.attempts()
        continued = lost = recomputed = 0
        by_trial: dict[int, list] = {}
        for att in attempts:
            by_trial.setdefault(att.trial, []).append(att)
        for trial, atts in by_trial.items():
            if trial < 0:
                continue
            for prev, nxt in itertools.pairwise(atts):
                mine = [r for r in rows if r.trial == trial and r.created < nxt.started
                        and r.status in ("committed", "deleted", "deleting")]  # fmt: skip
                if not mine:
                    continue
                continued += 1
                newest = max(mine, key=lambda r: r.step)
                lost += nxt.resumed_from != newest.id
                recomputed += max(0, prev.start_step + prev.steps - newest.step)
        s.close()
        print(f"trials: {len(b)} ({', '.join(sorted(states))}); continued from their own "
              f"checkpoint: {continued}; resumed from an older one: {lost}; steps recomputed "
              f"(as far as heartbeats saw): {recomputed}")  # fmt: skip
        if bad or lost or "RUNNING" in states or len(a) != len(b):
            print(f"MISMATCH: trials {bad} differ from the uninterrupted run")
            return 1
        print("identical to the uninterrupted run: params, values, intermediate values, weights")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
