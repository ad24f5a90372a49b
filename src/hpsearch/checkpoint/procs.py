"""Is a process on this host alive? Tells torn writes and dead workers from live ones."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while process `pid` runs on this host. A zombie (a killed child its parent has not
    reaped yet) counts as dead: it will never write or heartbeat again."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True  # no /proc (macOS): os.kill said it exists
