"""The ranks of a study's trials: one `Team` of `trials.processes` around each training call
(a trial, the warm-up, a replay), and nothing when a trial is one process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from hpsearch.config import StudySettings

if TYPE_CHECKING:
    from hpsearch.training import Trainer


def sizes_of(trainer: Trainer) -> tuple[int, int]:
    """A trainer's (training, validation) set sizes."""
    return trainer.stream.n, len(trainer.val_loader.dataset)  # type: ignore[arg-type]


@contextlib.contextmanager
def ranks_of(settings: StudySettings, trainer: Trainer, sizes: tuple[int, int]) -> Iterator[None]:
    """Train `trainer` with the study's ranks inside this block: the followers start here and
    end with it. `sizes` are rank 0's (train, val) dataset sizes, which every rank must share."""
    n = settings.trials.processes
    if n <= 1:
        yield
        return
    from hpsearch.training.team import Team

    team = Team(
        n, task=settings.task, study_path=settings.path, device=settings.device,
        timeout_s=settings.trials.rank_timeout_s, num_workers=settings.data.num_workers,
        sizes=sizes,
    )  # fmt: skip
    with team:
        team.attach(trainer)
        yield
