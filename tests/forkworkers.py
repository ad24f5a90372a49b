"""N `hpsearch worker` processes for a test, without N imports of torch: this process imports
hpsearch, torch and the task's modules once, then forks N children, each of which runs the
command line `hpsearch <args>` (`hpsearch.cli.main`) in a process of its own, with its own
engines, pools and connections, as a worker started on another machine has. Nothing here opens a
connection or starts a thread before the forks.

    python tests/forkworkers.py N worker study.yaml --storage URL

Prints one line per child, `pid exit-status cpu-seconds`, and exits 0 when every child exited 0.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    n, args = int(argv[0]), argv[1:]
    import sklearn.datasets  # noqa: F401  (the digits task's data: imported once, here)
    import torch
    import torch._dynamo  # noqa: F401  (imported by the first optimizer step: about 1 s of CPU)

    from hpsearch.cli import main as hpsearch

    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:  # the child: one worker, then out without running the parent's cleanup
            code = 1
            try:
                code = hpsearch(list(args))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    failed = 0
    for pid in pids:
        _, status, usage = os.wait4(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(f"{pid} {code} {usage.ru_utime + usage.ru_stime:.2f}", flush=True)
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
