"""Peak memory of a restore: `store.load` + `Trainer.restore` of the 100M state of
`benchmarks/checkpoint_io.py` (a 256 -> H -> H -> 10 MLP with fused AdamW: 12 bytes a parameter),
as a multiple of the state's bytes. Target: <= 1.3x.

Run from the repository root, by hand (about a minute):

    python benchmarks/restore_memory.py [--params 100000000] [--no-write]

Each variant runs in a fresh process (peak RSS is a high-water mark): the process imports
everything, builds the task's data, records its RSS, restores, and reports its peak RSS
(VmHWM) minus that baseline.

- `load + restore`: what hpsearch does: every tensor read into an allocation of its own while
  the file is hashed, then the model built on the meta device takes the tensors as they are.
- `one buffer per file (before)`: the previous read path, kept here for comparison: each file
  read into one buffer, tensors as views into it. The same bytes in memory, but the tensors share
  autograd version counters and sit at unaligned offsets (inexact on some kernels; see README).
- `+ first step`: the restore followed by one training step (gradients and the step's
  temporaries come on top: 4 bytes a parameter for the gradients alone).

It writes the `## Restore peak memory` section of benchmarks/RESULTS.md (other sections kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

RESULTS = os.path.join(HERE, "RESULTS.md")
VARIANTS = ("load + restore", "one buffer per file (before)", "load + restore + first step")


def _rss_peak() -> int:
    """VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's (kept across exec),
    and the parent held the whole state while saving it."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(root: str, ckpt_id: str, hidden: int, variant: str) -> None:
    import checkpoint_io as cio
    import torch

    from hpsearch.checkpoint import LocalStore, hashing
    from hpsearch.checkpoint.format import parse_file
    from hpsearch.training import Hooks, Trainer

    task = cio.MLPTask()
    ds = task.datasets()
    with torch.device("meta"):
        task.model({**cio.BASE_HP, "hidden": hidden})  # warm the code paths, allocate nothing
    store = LocalStore(root)
    info = store.info(ckpt_id)
    base = _rss_now()
    if variant == "one buffer per file (before)":
        tensors = {}
        for name in info.files:
            if name.endswith(".safetensors"):
                with open(os.path.join(root, ckpt_id, name), "rb", buffering=0) as f:
                    buf, _, _ = hashing.read_hashed(f, info.files[name][0], info.hash)
                tensors[name.split(".")[0]] = parse_file(buf, name)
        state = store.load(ckpt_id, groups=()).state
    else:
        loaded = store.load(ckpt_id)
        tensors, state = loaded.tensors, loaded.state
    trainer = Trainer.restore(task, tensors, state, datasets=ds)
    if variant.endswith("first step"):
        trainer.step(Hooks())
    print(json.dumps({"peak": _rss_peak() - base, "base": base}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", type=int, default=100_000_000)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)

    import checkpoint_io as cio

    from hpsearch.checkpoint import LocalStore

    hidden = cio.hidden_for(args.params)
    with tempfile.TemporaryDirectory(prefix="hpsearch-restore-mem-") as tmp:
        task = cio.MLPTask()
        trainer = cio.new_trainer(task, hidden, task.datasets(), seed=0)
        tensors, state = trainer.state()
        nbytes = cio.nbytes_of(tensors)
        store = LocalStore(os.path.join(tmp, "ck"))
        ckpt = store.save(tensors, state).id
        del trainer, tensors
        rows = []
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--child", store.root, ckpt, str(hidden), variant]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            peak = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
            rows.append((variant, peak, peak / nbytes))
            print(f"{variant:32s} peak +{peak / 1e6:8.0f} MB = {peak / nbytes:.2f}x the state")
    section = render(rows, nbytes, args.params)
    print(section)
    if not args.no_write:
        write_section(RESULTS, section)


def write_section(path: str, section: str) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it), keeping the others."""
    heading = section.splitlines()[0]
    with open(path) as f:
        text = f.read()
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[nxt + 1 :] if nxt >= 0 else "")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def render(rows: list[tuple[str, int, float]], nbytes: int, params: int) -> str:
    import checkpoint_io as cio

    m = cio.machine()
    lines = [
        "## Restore peak memory",
        "",
        f"Measured {dt.date.today().isoformat()} on {m['cpu']} ({m['cores']}), "
        f"`python benchmarks/restore_memory.py`: the {params / 1e6:.0f}M-parameter state of "
        f"checkpoint_io.py ({nbytes / 1e6:.0f} MB: weights + AdamW moments), peak RSS of a fresh "
        "process above its RSS before the restore. Target: restore <= 1.3x the state's bytes.",
        "",
        "| variant | peak above baseline | x state bytes |",
        "| --- | ---: | ---: |",
    ]
    for variant, peak, ratio in rows:
        lines.append(f"| {variant} | {peak / 1e6:.0f} MB | {ratio:.2f} |")
    lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
