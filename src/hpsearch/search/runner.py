"""`hpsearch run`: open the study, run one worker in this process, summarise."""

from __future__ import annotations

import time
from collections.abc import Callable

from optuna.trial import TrialState

from hpsearch.config import load_study_file
from hpsearch.errors import UsageError
from hpsearch.search.control import StopFlag
from hpsearch.search.records import set_study_attr, study_attr
from hpsearch.search.scheduler import strategy
from hpsearch.search.session import Session
from hpsearch.search.spend import plan_line
from hpsearch.search.summary import Summary, summarize
from hpsearch.search.worker import Worker

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def run_study(
    path: str,
    *,
    trials: int | None = None,
    storage: str | None = None,
    classic: bool = False,
    label: str = "",
    after: Callable[[], None] | None = None,
    budget: float | None = None,
    say_plan: bool = True,
    processes: int | None = None,
    listen: tuple[str, int] | None = None,
) -> Summary:
    """Create or continue the study until it has `trials` finished trials, or has spent its
    budget (`budget` full runs replaces the file's `trials.budget`; `processes`, its
    `trials.processes`). `after` runs once this
    worker is done and before the summary is taken (the parent waits there for its workers, so
    the summary counts their trials too). `say_plan`: print what the run will do first."""
    start = time.monotonic()
    settings = None
    if budget is not None or processes is not None:
        settings = load_study_file(path, budget=budget, processes=processes)
    session = Session.open(path, storage=storage, classic=classic, settings=settings)
    try:
        how = strategy(session)
        if trials is not None and how.sized:
            raise UsageError(
                f"--trials {trials}: a {how.name}'s size follows from its budget "
                "(trials.budget, or --budget for a new study) and its tree: keys; a larger "
                "search is a new study: give the file a new `name` and a larger budget"
            )
        s = session.settings
        target = how.target(s, trials)
        if say_plan:
            print(f"{label}{plan_line(s, classic=classic)}", flush=True)
        before = _finished(session)
        stop = StopFlag()
        try:
            with stop.installed():
                Worker(session, stop=stop, label=label, listen=listen).run(target)
                if after is not None:
                    after()
        finally:
            seconds = time.monotonic() - start
            total = float(study_attr(session.study, "wall_s", 0.0) or 0.0) + seconds
            set_study_attr(session.study, "wall_s", total)
        ran = _finished(session) - before
        return summarize(session, seconds, ran=ran, target=target, study_seconds=total)
    finally:
        session.close()


def _finished(session: Session) -> int:
    return len(session.study.get_trials(deepcopy=False, states=FINISHED))
