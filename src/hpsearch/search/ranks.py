"""The ranks of a study's trials (`trials.processes`): one `Team` of followers per worker,
started for its first trial and kept for the next ones while it is healthy (a follower costs a
process start, an import of the task and its data, and the process group), and nothing when a
trial is one process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from hpsearch.config import StudySettings, load_study_file
from hpsearch.errors import RankSetupError, UsageError

if TYPE_CHECKING:
    from hpsearch.training import Trainer
    from hpsearch.training.team import Team


class Ranks:
    """A worker's team of ranks. `sizes` gives rank 0's (train, val) dataset sizes, which every
    rank must share."""

    def __init__(
        self,
        settings: StudySettings,
        sizes: Callable[[], tuple[int, int]],
        *,
        listen: tuple[str, int] | None = None,
    ) -> None:
        self.settings, self.sizes, self.listen = settings, sizes, listen
        self.team: Team | None = None

    @contextlib.contextmanager
    def of(self, trainer: Trainer) -> Iterator[None]:
        """Train `trainer` with the study's ranks inside this block."""
        n = self.settings.trials.processes
        if n <= 1:
            yield
            return
        if self.team is None:
            from hpsearch.training.team import Team

            s = self.settings
            if s.task.startswith("__main__:"):
                raise RankSetupError(
                    f"trials.processes: {n}: the task {s.task.partition(':')[2]} is defined in "
                    "__main__ (a notebook, or a script run directly), which the other ranks' "
                    "processes cannot import: move it into a .py file and pass "
                    "task='that_file.py:Class'"
                )
            self.team = Team(
                n, task=s.task, study_path=s.path, device=s.device,
                timeout_s=s.trials.rank_timeout_s, num_workers=s.data.num_workers,
                sizes=self.sizes(), listen=self.listen,
            ).start()  # fmt: skip
        team = self.team
        team.attach(trainer)
        try:
            yield
        finally:
            team.release(trainer)
            if not team.healthy:  # a rank died, or rank 0 left in the middle of a collective
                self.close()

    def close(self) -> None:
        team, self.team = self.team, None
        if team is not None:
            team.close()


def sizes_of(trainer: Trainer) -> tuple[int, int]:
    """A trainer's (training, validation) set sizes."""
    return trainer.stream.n, len(trainer.val_loader.dataset)  # type: ignore[arg-type]


@contextlib.contextmanager
def ranks_of(settings: StudySettings, trainer: Trainer, sizes: tuple[int, int]) -> Iterator[None]:
    """One team for this block only (a replay, check-resume)."""
    ranks = Ranks(settings, lambda: sizes)
    try:
        with ranks.of(trainer):
            yield
    finally:
        ranks.close()


def follow(
    study: str,
    connect: tuple[str, int],
    rank: int,
    *,
    local_rank: int | None,
    patience_s: float,
    processes: int | None = None,
) -> int:
    """`hpsearch rank`: a follower rank of the worker listening at `connect`, started by a
    launcher on any machine; returns its exit status."""
    from hpsearch.training.follower import launched

    settings = load_study_file(study, writable=False, processes=processes)
    world = settings.trials.processes
    if not 1 <= rank < world:
        raise UsageError(
            f"--rank {rank}: the study's trials have {world} processes (trials.processes), "
            f"so a follower is rank 1 .. {world - 1}"
        )
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    follower = {
        "rank": rank, "world": world, "host": connect[0], "port": connect[1],
        "task": settings.task, "study_path": settings.path, "device": settings.device,
        "timeout_s": settings.trials.rank_timeout_s, "num_workers": settings.data.num_workers,
        "local_rank": local_rank,
    }  # fmt: skip
    return launched(follower, patience_s=patience_s)
