"""`hpsearch run`: open the study, run one worker in this process, summarise."""

from __future__ import annotations

import time
from collections.abc import Callable

from hpsearch.search.control import StopFlag
from hpsearch.search.session import Session
from hpsearch.search.summary import Summary, summarize
from hpsearch.search.worker import Worker


def run_study(
    path: str,
    *,
    trials: int | None = None,
    storage: str | None = None,
    classic: bool = False,
    label: str = "",
    after: Callable[[], None] | None = None,
) -> Summary:
    """Create or continue the study until it has `trials` finished trials. `after` runs once this
    worker is done and before the summary is taken (the parent waits there for its workers, so
    the summary counts their trials too)."""
    session = Session.open(path, storage=storage, classic=classic)
    try:
        target = trials if trials is not None else session.settings.trials.n
        start = time.monotonic()
        stop = StopFlag()
        with stop.installed():
            Worker(session, stop=stop, label=label).run(target)
            if after is not None:
                after()
        return summarize(session, time.monotonic() - start)
    finally:
        session.close()
