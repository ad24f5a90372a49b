"""TensorBoard: one run directory per trial, scalars as it evaluates, HParams at its end."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hpsearch.search.loggers.base import TrialEnd, metrics_of, run_name


class TensorBoardLogger:
    """Scalars `<metric>` at each evaluation (x: the optimizer step) in `<dir>/<study>/<trial>`,
    and at the end the HParams plugin's record: hyperparameters and lineage (as `hpsearch/...`).
    Its writer queues events to a thread: microseconds on the trial's side."""

    def __init__(self, root: str, study: str, number: int) -> None:
        self.dir = os.path.join(root, study, run_name(number))
        self.name = f"the TensorBoard logger ({root})"
        self._writer: Any = None

    def writer(self) -> Any:
        if self._writer is None:  # made on first use: a trial that never evaluates leaves no run
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.dir, flush_secs=10)
        return self._writer

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        w = self.writer()
        for name, value in metrics.items():
            w.add_scalar(name, value, global_step=step)

    def end(self, info: TrialEnd) -> None:
        from torch.utils.tensorboard.summary import hparams

        last = metrics_of(info.evaluations[-1]) if info.evaluations else {}
        values: dict[str, Any] = {k: _hparam(v) for k, v in info.hparams.items()}
        values |= {f"hpsearch/{k}": _hparam(v) for k, v in info.lineage.items()}
        values["hpsearch/state"] = info.state
        exp, ssi, sei = hparams(values, last)
        w = self.writer()
        for summary in (exp, ssi, sei):
            w.file_writer.add_summary(summary)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _hparam(value: Any) -> int | float | str | bool:
    return value if isinstance(value, int | float | str | bool) else str(value)
