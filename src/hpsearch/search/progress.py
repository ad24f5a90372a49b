"""The study as a whole while it runs: finished trials against the target, the best value so far,
and an ETA from what the trials of this run cost. Shown in each trial's bar on a terminal, and as
a plain line every few trials elsewhere (logs, CI, a file)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from optuna.trial import FrozenTrial, TrialState

from hpsearch.config.sections import UNBOUNDED
from hpsearch.console import human_time, live_display
from hpsearch.search.context import RunContext
from hpsearch.search.jobs import Outcome
from hpsearch.search.records import NEVER_RAN, trial_attr
from hpsearch.search.retries import retried_numbers, settled
from hpsearch.search.spend import spend_note, spent_samples

LINE_EVERY = 10  # trials between progress lines off a terminal
LINE_AT_LEAST_S = 60.0  # ... or this long, whichever comes first


class StudyProgress:
    """`size`, if given, tells the study's target from its trials as they are now (a fork tree:
    a generation whose nodes were pruned has fewer survivors, so fewer children than planned)."""

    def __init__(
        self,
        ctx: RunContext,
        target: int,
        size: Callable[[Sequence[FrozenTrial]], int] | None = None,
    ) -> None:
        self.ctx, self.target, self.size = ctx, target, size
        self.start = time.monotonic()
        self.ran = 0  # trials this worker finished in this run
        self.tty = live_display(sys.stderr)
        self._since_line, self._line_at = 0, self.start

    def spend(self) -> str | None:
        """ "spent 5.2 of 8 full runs", for a study with a budget (else None)."""
        budget = self.ctx.settings.trials.budget
        if budget is None:
            return None
        s = self.ctx.session
        warm = 0 if s.classic else int(s.attr("warmup_samples", 0) or 0)
        spent = spent_samples(s.study.get_trials(deepcopy=False), warm)
        return "spent " + spend_note(spent, self.ctx.budgets, budget)

    def counts(self) -> tuple[int, float | None, int]:
        """Trials of the study finished for good (all workers, all runs), its best value, its
        target. As the target counts them: a failed trial continued by a retry counts through
        its retry, and a trial that never ran (enqueued where a fork tree had no place) not at
        all, so a study ends on "N/N trials"."""
        trials = self.ctx.session.study.get_trials(deepcopy=False)
        retried, retries = retried_numbers(trials), self.ctx.settings.trials.retries
        finished = [
            t for t in trials
            if settled(t, trials, retried, retries)
            and trial_attr(t, "fail_kind") not in NEVER_RAN
        ]  # fmt: skip
        done = [t.value for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
        pick = max if self.ctx.settings.objective.direction == "maximize" else min
        target = self.size(trials) if self.size is not None else self.target
        return len(finished), (pick(done) if done else None), target

    def summary(self) -> str:
        finished, best, target = self.counts()
        bounded = target < UNBOUNDED
        parts = [f"{finished}/{target} trials" if bounded else f"{finished} trials"]
        spend = self.spend()
        if spend is not None:
            parts.append(spend)
        if best is not None:
            parts.append(f"best {self.ctx.metric} {best:.4g}")
        left = max(0, target - finished)
        if self.ran and left and bounded:
            per_trial = (time.monotonic() - self.start) / self.ran
            parts.append(f"ETA {human_time(per_trial * left)}")
        return ", ".join(parts)

    def label(self, number: int) -> str:
        """A trial bar's label: the study's progress rides along on a terminal."""
        return f"trial {number} [{self.summary()}]" if self.tty else f"trial {number}"

    def finished(self, out: Outcome) -> None:
        """After each trial: off a terminal, a progress line every LINE_EVERY trials or minute."""
        if out.state == "LOST":
            return
        self.ran += 1
        self._since_line += 1
        now = time.monotonic()
        if not self.tty and (
            self._since_line >= LINE_EVERY or now - self._line_at >= LINE_AT_LEAST_S
        ):
            self._since_line, self._line_at = 0, now
            self.ctx.say(f"progress: {self.summary()}")
