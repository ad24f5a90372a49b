"""Weights & Biases: one run per trial, written at its end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpsearch.config import WandbSettings
from hpsearch.search.loggers.base import TrialEnd, metrics_of, run_name

INIT_TIMEOUT_S = 30  # W&B's default waits 90 s for its service and server before it gives up
_TAG_LIMIT = 64  # W&B's longest tag


class WandbLogger:
    """One W&B run per trial in the study file's project, grouped by study and named
    `trial-NNNNN`: config (the hyperparameters, and `hpsearch.<lineage key>`, `hpsearch.study`,
    `hpsearch.trial`), every evaluation's metrics (step: the optimizer step), tags
    `hpsearch.<lineage key>=<value>` and `hpsearch.state=<state>`, and the exit code (1 for a
    failed trial). Written at the trial's end: a trial stopped or taken over is logged once,
    when it ends."""

    def __init__(self, settings: WandbSettings) -> None:
        self.settings = settings
        self.name = f"the W&B logger (project {settings.project})"

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        pass  # the evaluations come at the end, from the trial's record: one run, opened once

    def end(self, info: TrialEnd) -> None:
        import wandb

        s = self.settings
        lineage = {f"hpsearch.{k}": v for k, v in info.lineage.items()}
        config: dict[str, Any] = {**info.hparams, **lineage}
        config |= {"hpsearch.study": info.study, "hpsearch.trial": info.number}
        tags = [f"{k}={v}"[:_TAG_LIMIT] for k, v in lineage.items()]
        tags.append(f"hpsearch.state={info.state}")
        run = wandb.init(
            project=s.project, entity=s.entity, mode=s.mode, dir=s.dir,
            name=run_name(info.number), group=info.study, config=config, tags=tags,
            reinit="create_new",  # never the task's own run, if it has one
            settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, console="off", silent=True),
        )  # fmt: skip
        try:
            for e in info.evaluations:
                run.log(metrics_of(e), step=int(e["step"]))
            run.summary["hpsearch.state"] = info.state
        finally:
            run.finish(exit_code=1 if info.state == "FAIL" else 0)

    def close(self) -> None:
        pass
