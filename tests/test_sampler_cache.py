"""A sampler reseeded for each trial keeps TPE's trial-derived caches (`bridge.carry_caches`),
and samples exactly what a sampler that recomputes them samples: the cache is a function of the
trials, never of the seed. A resumed study starts with empty caches, so if the two differed, a
resumed study would part from an uninterrupted one."""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from hpsearch.search.optuna_bridge import carry_caches

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _suggest(trial: optuna.Trial) -> dict[str, object]:
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
    }


def _value(p: dict[str, object]) -> float:
    lr, dropout, bs = float(p["lr"]), float(p["dropout"]), int(p["batch_size"])  # type: ignore[arg-type]
    return (math.log10(lr) + 2.5) ** 2 + (dropout - 0.2) ** 2 + bs / 1000


def _grow(carry: bool, n: int = 40) -> tuple[list[dict[str, object]], int]:
    """`n` trials, each asked under a sampler made anew with a seed of its own (as
    `asking.ask` does); every third trial stays running until three trials later (other
    workers' trials, pruned ones) so the incremental cache meets unfinished trials. Returns the
    params and how many samplers started with a carried cache."""
    study = optuna.create_study(direction="minimize")
    sampler: optuna.samplers.BaseSampler | None = None
    running: list[tuple[optuna.Trial, dict[str, object]]] = []
    out, carried = [], 0
    for k in range(n):
        new = optuna.samplers.TPESampler(seed=1000 + k, n_startup_trials=6, constant_liar=True)
        if carry and sampler is not None:
            carry_caches(sampler, new)
            carried += new._search_space is sampler._search_space  # type: ignore[attr-defined]
        study.sampler = sampler = new
        trial = study.ask()
        params = _suggest(trial)
        out.append(params)
        if k % 3 == 0:
            running.append((trial, params))
        elif k % 7 == 0:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, _value(params))
        if len(running) > 1:
            t, p = running.pop(0)
            study.tell(t, _value(p))
    return out, carried


def test_a_reseeded_sampler_with_the_carried_cache_samples_what_a_fresh_one_samples() -> None:
    fresh, none = _grow(carry=False)
    kept, carried = _grow(carry=True)
    assert none == 0 and carried == len(kept) - 1  # the cache did travel, sampler to sampler
    assert kept == fresh


def test_caches_are_carried_only_between_samplers_of_one_class() -> None:
    tpe = optuna.samplers.TPESampler(seed=0)
    rnd = optuna.samplers.RandomSampler(seed=1)
    carry_caches(tpe, rnd)
    assert not hasattr(rnd, "_search_space")
