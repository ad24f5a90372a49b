"""The fault campaign: kill, starve and forge a real study, then check it ends as if nothing
had happened.

Usage:

    python benchmarks/fault_campaign.py STUDY.yaml [--kills N] [--seed S]
                                        [--faults kill,disk-full,forged] [--keep DIR]

STUDY.yaml is copied into a temporary directory, with its storage and checkpoints pointed there
(your own runs/ is never touched) and `keep_best` raised so that every final checkpoint stays to
be compared. The copy is run once without faults: the reference. Then each fault gets a fresh
copy, and that copy's command (`hpsearch run COPY.yaml`) is rerun after every fault until the
study finishes. The faults:

- kill: N SIGKILLs, each right after an event of the run, the events taking turns: after its
  Nth committed checkpoint while a trial is mid-way, inside a checkpoint save (best effort: a
  small save can be over before the watcher sees it; the summary counts the hits), after its Nth
  new report, and while it deletes a checkpoint. Each kill that leaves a trial mid-way must be
  followed by a takeover from that trial's newest checkpoint (hpsearch.testing.faults).
- forged: between two runs of the kill campaign (after the first kills that leave a trial
  mid-way), the checkpoint that trial must resume from is damaged: one bit flipped in its
  weights, its manifest deleted, its optimizer file truncated. The next run must not load it
  (the trial falls back to an older checkpoint or its parent) and the study must still end
  identical. Without `kill`, this fault makes three kills of its own.
- disk-full: the checkpoints go to a small tmpfs mounted for the campaign (root, Linux), sized to
  fill up part way through: the run must stop with a clear error (exit 1, no traceback), and after
  the tmpfs is grown the same command must finish the study. Where mounting is not allowed it
  falls back to RLIMIT_FSIZE in the child, which fails a large write with EFBIG instead of
  ENOSPC (and can hit the database's own files too): a rougher stand-in, said in the summary.

At the end it prints a summary table (faults made, reruns, takeovers, identical or not, wall
time) and exits 1 if any fault left the study different from the reference, unfinished, or with
a forged checkpoint loaded. Identical means: the same trials with the same states, params,
values and intermediate values, and bitwise equal final weights.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import yaml

from hpsearch.testing import (
    EVENTS,
    FORGERIES,
    Kill,
    StudyPaths,
    forge,
    kill_at_events,
    takeovers_after,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS = ("kill", "forged", "disk-full")


@dataclass
class Row:
    fault: str
    made: str
    runs: int
    outcome: str
    identical: bool
    seconds: float


def _copy(study: str, workdir: str, ckdir: str | None = None) -> str:
    """The study file, copied into `workdir` with everything it writes kept there."""
    with open(study) as f:
        doc = yaml.safe_load(f)
    task_path, _, cls = doc["task"].rpartition(":")
    if task_path.endswith(".py") and not os.path.isabs(task_path):
        doc["task"] = os.path.join(os.path.dirname(os.path.abspath(study)), task_path) + ":" + cls
    os.makedirs(workdir, exist_ok=True)
    doc["storage"] = f"sqlite:///{os.path.join(workdir, 'study.db')}"
    ck = doc.setdefault("checkpoints", {})
    ck["dir"] = ckdir or os.path.join(workdir, "checkpoints")
    ck["keep_best"] = 10_000  # keep every final, to compare weights
    path = os.path.join(workdir, os.path.basename(study))
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def _cmd(path: str) -> list[str]:
    return [sys.executable, "-m", "hpsearch", "run", path]


def _finish(path: str, tries: int = 5) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Rerun the study until a run ends it (a run left alone ends when its target is reached
    or its tree is grown), or `tries` runs; returns the runs made and the last one."""
    for run in range(1, tries + 1):
        done = subprocess.run(_cmd(path), capture_output=True, text=True)
        if done.returncode != 130:  # 130: stopped (a signal); anything else ends it
            return run, done
    return tries, done


def _results(path: str) -> dict[int, tuple]:
    from hpsearch.search.records import PREFIX as ATTR
    from hpsearch.search.session import Session

    s = Session.open(path, create=False)
    out = {}
    for t in s.study.get_trials():
        final = t.user_attrs.get(ATTR + "final_checkpoint")
        weights = s.store.load(final).tensors["model"] if t.state.name == "COMPLETE" else None
        out[t.number] = (t.state.name, t.params, t.value, dict(t.intermediate_values), weights)
    s.close()
    return out


def _differ(a: dict[int, tuple], b: dict[int, tuple]) -> list[str]:
    bad = [f"trials {sorted(a)} vs {sorted(b)}"] if sorted(a) != sorted(b) else []
    for n in sorted(set(a) & set(b)):
        if a[n][:4] != b[n][:4]:
            bad.append(f"trial {n}: {a[n][:3]} vs {b[n][:3]}")
        elif a[n][4] is not None and not all(torch.equal(a[n][4][k], b[n][4][k]) for k in a[n][4]):
            bad.append(f"trial {n}'s weights")
    return bad


def _lineage(path: str) -> tuple[list, list]:
    from hpsearch.search.session import Session

    s = Session.open(path, create=False)
    out = s.lineage.attempts(), s.lineage.checkpoints()
    s.close()
    return out


def kill_and_forge(
    study: str, work: str, ref: dict, kills: int, seed: int, forged: bool
) -> list[Row]:
    """The kill campaign, with checkpoints forged between runs when `forged`; `kills=0`: only
    the three commit kills the forgeries need."""
    t0 = time.monotonic()
    path = _copy(study, os.path.join(work, "killed"))
    paths = StudyPaths.of(path)
    todo = list(FORGERIES) if forged else []

    def between(k: Kill) -> None:
        if todo and k.trial is not None and k.checkpoint is not None:
            k.forged = forge(paths.root, k.checkpoint, todo.pop(0))

    events = EVENTS if kills else ("commit",)
    log = os.path.join(work, "killed", "runs.log")
    made = kill_at_events(
        _cmd(path), paths, kills or len(FORGERIES), random.Random(seed), events=events,
        between=between, log=log,
    )  # fmt: skip
    runs, done = _finish(path)
    runs += len(made)
    with open(log, "a") as f:
        f.write(done.stdout + done.stderr)
    with open(log) as f:
        said = f.read()
    attempts, rows = _lineage(path)
    problems = takeovers_after(made, attempts, rows)
    if done.returncode != 0:
        problems.append(f"the last run failed (exit {done.returncode}): {_last(done.stderr)}")
    bad = _differ(ref, _results(path))
    secs = time.monotonic() - t0
    out = []
    forced = [k for k in made if k.trial is not None and not k.forged]
    if kills:
        by = {e: sum(k.event == e for k in made) for e in EVENTS}
        hits = sum(k.hit for k in made if k.event == "save")
        out.append(Row(
            "kill",
            f"{len(made)} SIGKILLs: commit {by['commit']}, save {by['save']} ({hits} inside), "
            f"report {by['report']}, gc {by['gc']}",
            runs,
            f"{len(forced)} takeovers forced, {len(forced) - len(problems)} from the newest "
            f"checkpoint" + (f"; {'; '.join(problems)}" if problems else ""),
            not bad and not problems,
            secs,
        ))  # fmt: skip
    if forged:
        fk = [k for k in made if k.forged]
        status = {r.id: r.status for r in rows}
        refused = []
        for k in fk:  # the run that met it says: "checkpoint X cannot be used (why); trying..."
            mark = f"checkpoint {k.checkpoint} cannot be used ("
            if mark in said:
                why = said.partition(mark)[2].partition("); trying")[0]
                why = why.rpartition(k.checkpoint + "/")[2] or why  # the file, not its path
                refused.append(f"trial {k.trial}: {why[:90]}")
            elif status.get(k.checkpoint) != "committed":  # recovery dropped it unread
                refused.append(f"trial {k.trial}: dropped ({status.get(k.checkpoint)})")
            else:
                refused.append(f"trial {k.trial}: ?")
        ok = all(not r.endswith("?") for r in refused) and len(fk) == len(FORGERIES)
        out.append(Row(
            "forged",
            "; ".join(f"trial {k.trial}: {k.forged}" for k in fk) or "none (no trial mid-way)",
            runs,
            "refused: " + "; ".join(refused),
            not bad and ok,
            secs,
        ))  # fmt: skip
    if bad:
        print(f"kill/forged study differs from the reference: {'; '.join(bad[:5])}")
    return out


def _last(text: str) -> str:
    """The last line of a run's output, with the long temporary paths cut to their file."""
    lines = [x for x in text.strip().splitlines() if x.strip()]
    words = [w.rpartition("/")[2] if "/" in w else w for w in (lines[-1] if lines else "").split()]
    return " ".join(words)[:200]


def _checkpoint_bytes(path: str) -> int:
    """The size of the reference's largest checkpoint directory."""
    root = StudyPaths.of(path).root
    sizes = [
        sum(os.path.getsize(os.path.join(root, d, f)) for f in os.listdir(os.path.join(root, d)))
        for d in os.listdir(root)
        if not d.startswith(".")
    ]
    return max(sizes)


def disk_full(study: str, work: str, ref: dict, ref_path: str) -> Row:
    t0 = time.monotonic()
    ck = _checkpoint_bytes(ref_path)
    mnt = os.path.join(work, "full", "ckpt")
    os.makedirs(mnt)
    path = _copy(study, os.path.join(work, "full"), ckdir=mnt)
    size = 8 * ck + 64 * 4096  # fills after the base and a few trials' finals
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], capture_output=True
    ).returncode == 0  # fmt: skip
    try:
        if mounted:
            how = f"tmpfs of {size / 1e6:.1f} MB (checkpoints {ck / 1e6:.2f} MB each): ENOSPC"
            first = subprocess.run(_cmd(path), capture_output=True, text=True)
        else:
            how = f"RLIMIT_FSIZE {ck // 2} bytes (no mount here): EFBIG, not ENOSPC"

            def limit() -> None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG rather than death
                resource.setrlimit(resource.RLIMIT_FSIZE, (ck // 2, ck // 2))

            first = subprocess.run(_cmd(path), capture_output=True, text=True, preexec_fn=limit)
        clear = "Traceback" not in first.stderr
        outcome = f"run 1: exit {first.returncode}, {_last(first.stderr)!r}" + (
            "" if clear else " (WITH A TRACEBACK)"
        )
        if first.returncode == 0:
            outcome = "the disk never filled (raise the study's size or lower the tmpfs)"
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=4g", mnt], check=True)
        runs, done = _finish(path)
        outcome += f"; after freeing space: exit {done.returncode}"
        bad = _differ(ref, _results(path)) if done.returncode == 0 else ["unfinished"]
        if bad:
            outcome += f"; differs: {'; '.join(bad[:3])}"
        ok = first.returncode == 1 and clear and not bad
        return Row("disk-full", how, runs + 1, outcome, ok, time.monotonic() - t0)
    finally:
        if mounted:
            subprocess.run(["umount", mnt], check=False)


def _print(rows: list[Row]) -> None:
    print()
    print(f"{'fault':<10} {'runs':>4} {'identical':>9} {'s':>6}  what / outcome")
    for r in rows:
        print(f"{r.fault:<10} {r.runs:>4} {'yes' if r.identical else 'NO':>9} {r.seconds:>6.0f}  "
              f"{r.made}")  # fmt: skip
        print(f"{'':<34}{r.outcome}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[3:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", nargs="?", help="a study file (default: studies/quickstart.yaml)")
    p.add_argument("--study", dest="study_opt", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of the kill fault (20)")
    p.add_argument("--seed", type=int, default=0, help="orders the events and their N (0)")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help=f"comma-separated, of: {', '.join(FAULTS)} (all)")  # fmt: skip
    p.add_argument("--keep", help="work in this directory and keep it (default: a temp dir)")
    args = p.parse_args(argv)
    study = args.study or args.study_opt or os.path.join(ROOT, "studies", "quickstart.yaml")
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        p.error(f"--faults: unknown {unknown}; choose from {', '.join(FAULTS)}")
    work = args.keep or tempfile.mkdtemp(prefix="hpsearch-faults-")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.monotonic()
        ref_path = _copy(study, os.path.join(work, "ref"))
        subprocess.run(_cmd(ref_path), check=True, stdout=subprocess.DEVNULL)
        ref = _results(ref_path)
        rows = [Row("none", "uninterrupted reference", 1, f"{len(ref)} trials", True,
                    time.monotonic() - t0)]  # fmt: skip
        if "kill" in faults or "forged" in faults:
            kills = args.kills if "kill" in faults else 0
            rows += kill_and_forge(study, work, ref, kills, args.seed, "forged" in faults)
        if "disk-full" in faults:
            rows.append(disk_full(study, work, ref, ref_path))
        _print(rows)
        return 0 if all(r.identical for r in rows) else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
