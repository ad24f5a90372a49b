"""The search-efficiency benchmark's own code (benchmarks/efficiency): a tiny real run of two arms
to a budget in samples, checked against the Optuna studies it read, and its pure functions
(target, reach, ratios, verdicts, anytime bands, PBT curves, JSON merge) on hand-made curves.
The issue's target itself is a measurement (benchmarks/RESULTS.md), not a test."""

from __future__ import annotations

import datetime as dt
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficiency import analysis, arms, pbt, records  # noqa: E402
from efficiency.records import Point, Run  # noqa: E402


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "search_efficiency", ROOT / "benchmarks" / "search_efficiency.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


se = _load_cli()

TINY = f"""
name: tiny-digits
task: {ROOT / "examples" / "digits.py"}:DigitsMLP
seed: 0
objective: {{metric: val_loss, direction: minimize}}
checkpoints: {{every: 1.0}}
warmup:
  epochs: 0.5
  hparams: {{lr: 1.0e-3, dropout: 0.1, batch_size: 64, weight_decay: 1.0e-4, hidden: 16}}
trials: {{n: 1000, epochs: 0.5, eval_every: 0.25}}
search_space:
  lr: {{float: [1.0e-4, 3.0e-2], log: true}}
  batch_size: {{categorical: [64, 128]}}
sampler: {{name: TPESampler, n_startup_trials: 3}}
pruner: {{name: MedianPruner, n_startup_trials: 2, n_warmup_steps: 1}}
"""
N_TRAIN = 1438  # digits' training split
BUDGET = 2  # full runs (1 epoch each)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Run]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("efficiency")
    study = root / "tiny.yaml"
    study.write_text(TINY)
    full = round(arms.full_run_epochs(str(study)) * arms.prime(str(study)))
    out = {}
    for arm, classic in (("tpe-median", True), ("fork", False)):
        copy = arms.study_copy(str(study), str(root / arm), seed=1, budget=BUDGET)
        out[arm] = arms.run_hpsearch(copy, workload="tiny", arm=arm, seed=1, classic=classic,
                                     full=full)  # fmt: skip
    return root, out


def test_an_arm_stops_starting_trials_once_its_budget_is_trained(real) -> None:
    _, runs = real
    for r in runs.values():
        assert r.full_samples == N_TRAIN and r.budget_samples == BUDGET * r.full_samples
        assert r.points[-2].samples < r.budget_samples <= r.points[-1].samples
        assert r.total_samples < r.budget_samples + r.full_samples  # one trial's overshoot
        assert [p.trial for p in r.points] == list(range(len(r.points)))


def test_costs_match_the_optuna_studies(real) -> None:
    import optuna

    root, runs = real
    for arm, r in runs.items():
        name = "tiny-digits" + ("-classic" if arm == "tpe-median" else "")
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / arm / 'study.db'}")
        assert (r.total_samples, r.total_steps) == arms.spent(study)
        warm = study.user_attrs.get("hpsearch.warmup_samples", 0)
        assert (warm > 0) == (arm == "fork")
        assert r.points[0].samples - warm == study.trials[0].user_attrs["hpsearch.samples_trained"]
        assert r.final_best == study.best_value
        bests = [p.best for p in r.points if p.best is not None]
        assert bests == sorted(bests, reverse=True)  # minimize: never gets worse
        for a, b in itertools.pairwise(r.points):
            assert a.samples < b.samples and a.steps < b.steps and a.wall_s <= b.wall_s
        # a completed classic trial trains the whole run (1 epoch), a forked one its second half,
        # to the first whole batch past it
        own = N_TRAIN if arm == "tpe-median" else round(N_TRAIN / 2)
        for t in study.trials:
            if t.state.name == "COMPLETE":
                trained = t.user_attrs["hpsearch.samples_trained"]
                assert own <= trained < own + t.params["batch_size"]


def test_json_round_trip_merge_and_redraw(real, tmp_path: Path) -> None:
    _, runs = real
    src = tmp_path / "a.json"
    meta = {"date": "d", "commands": ["python x"], "walls": {"python x": "5 s"}}
    records.save_runs(str(src), list(runs.values()), meta)
    _, back = records.load_runs(str(src))
    assert back == list(runs.values())
    assert se.main(["--from", str(src), "--out", str(tmp_path / "redo"), "--name", "r"]) == 0
    md = (tmp_path / "redo" / "r.md").read_text()
    assert "### tiny (val_loss, minimize; a full run is 1438 samples)" in md
    assert "| TPE + MedianPruner (classic) | 1/1 |" in md
    assert "Command (5 s of wall time): `python x`" in md
    assert (tmp_path / "redo" / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "redo" / "r.json").read_text())["runs"][0]["arm"] in runs


def _run(arm: str, seed: int, curve: list[tuple[int, float]], full: int = 100) -> Run:
    """A minimizing run from (cumulative samples, value) of completed trials."""
    points, best = [], None
    for i, (samples, value) in enumerate(curve):
        best = value if best is None else min(best, value)
        points.append(Point(i, "COMPLETE", value, samples // 10, samples, float(i), best))
    return Run("w", arm, seed, "minimize", "loss", full, 0, float(len(curve)), points)


def _bench() -> list[Run]:
    runs = []
    for s in range(5):  # classic ends at 1.0 + s/10 after 800 samples: the target is 1.2
        runs.append(_run("tpe-median", s, [(300, 2.0), (800, 1.0 + s / 10)]))
        # the tree gets to 1.1 at 300 samples in seeds 0-3, never in seed 4
        end = 1.3 if s == 4 else 1.1
        runs.append(_run("tree", s, [(100, 1.5), (300, end), (600, end)]))
        runs.append(_run("ray-pbt", s, [(400, 1.4), (800, 1.15)]))  # reaches 1.2 at 800
    return runs


def test_target_reach_ratios_and_verdict_from_hand_made_curves() -> None:
    runs = _bench()
    assert analysis.targets(runs) == {"w": pytest.approx(1.2)}
    reach = analysis.reaches(runs, "w", 1.2)
    tree = [r for r in reach if r.arm == "tree"]
    classic = [r for r in reach if r.arm == "tpe-median"]
    pbt_ = [r for r in reach if r.arm == "ray-pbt"]
    assert [r.samples for r in tree] == [300, 300, 300, 300, None]
    assert [r.ratio for r in tree] == [300 / 800] * 4 + [None]
    assert [r.samples for r in classic] == [800, 800, 800, None, None]  # 1.3 and 1.4 miss it
    s = analysis.arm_summary(tree, classic, "minimize")
    assert (s["reached"], s["reached_half"], s["ratio"]) == (4, 4, 300 / 800)
    assert s["final_median"] == pytest.approx(1.1) and s["total_ratio"] == 600 / 800
    assert s["worse_than_classic"] is False  # 1.1 beats classic's median 1.2
    vs = analysis.against(tree, pbt_)
    assert vs == {"ratio": 300 / 800, "paired": 4, "only_mine": 0, "only_theirs": 1,
                  "both_missed": 0}  # fmt: skip
    v = analysis.verdict(s, vs)
    assert v == {"half": True, "need": 4, "earlier_than_pbt": False, "quality": True}
    md = se.report.markdown(runs)
    assert "| fork tree at B | 4/5 | 4/5 | 0.38 |" in md
    assert "0.38 (4), 1 only the baseline" in md


def test_anytime_bands_are_step_functions_over_seeds() -> None:
    a = _run("x", 0, [(100, 3.0), (300, 1.0)])
    b = _run("x", 1, [(200, 2.0), (400, 1.5)])
    assert analysis.best_at(a, [0.5, 1.0, 2.9, 3.0, 9.0]) == [None, 3.0, 3.0, 1.0, 1.0]
    band = analysis.bands([a, b], [1.0, 2.0, 3.5, 4.0])
    # after 3.0 only b still runs (a has spent its budget): half the seeds are enough
    assert band["median"] == [3.0, 2.5, 2.0, 1.5]
    assert band["min"] == [3.0, 2.0, 2.0, 1.5] and band["max"] == [3.0, 3.0, 2.0, 1.5]
    assert analysis.bands([a, b], [0.5])["median"] == [None]


def test_pbt_reports_become_a_cumulative_curve() -> None:
    rows = [
        {"member": 1, "start": 10.0, "t": 12.0, "value": 2.0, "samples": 50, "steps": 5,
         "position": 50, "params": {"lr": 0.1}},
        {"member": 0, "start": 9.0, "t": 13.0, "value": 2.5, "samples": 50, "steps": 5,
         "position": 50, "params": {"lr": 0.2}},
        {"member": 0, "start": 14.0, "t": 16.0, "value": 1.5, "samples": 64, "steps": 4,
         "position": 114, "params": {"lr": 0.12}},
    ]  # fmt: skip
    points, wall = pbt.pbt_points(rows, "minimize")
    assert [p.samples for p in points] == [50, 100, 164]
    assert [p.steps for p in points] == [5, 10, 14]
    assert [p.best for p in points] == [2.0, 2.0, 1.5]
    assert [p.wall_s for p in points] == [3.0, 4.0, 7.0] and wall == 7.0
    clip = pbt.Clip({"dropout": (0.0, 0.5), "batch": (16, 64)})
    assert clip({"dropout": 0.6, "batch": 77, "lr": 9.0}) == {"dropout": 0.5, "batch": 64,
                                                              "lr": 9.0}  # fmt: skip


def test_a_later_run_of_the_same_arm_and_seed_replaces_the_earlier() -> None:
    old, new, other = _run("tree", 0, [(1, 2.0)]), _run("tree", 0, [(1, 1.0)]), _run("x", 0, [])
    assert records.merge([old, other, new]) == [new, other]
    assert se.tree_label({}) == "tree"
    assert se.tree_label({"roots": 8, "rungs": [0.25, 1.0]}) == "tree[r8 rungs0.25/1.0]"
    assert se.tree_keys("tree-sh", {"keep": 0.25}) == {"keep": 0.5, "children": 1}
    assert se.tree_keys("tree", {"keep": 0.25, "pruner": "none"}) == {"keep": 0.25}
    start = dt.datetime(2026, 1, 1)
    assert records.curve([], direction="minimize", started=start) == []


def _trial(number: int, state: str, value: float | None, samples: int, second: int, **attrs):
    from types import SimpleNamespace

    user = {"hpsearch.steps_trained": samples // 10, "hpsearch.samples_trained": samples}
    user.update({f"hpsearch.{k}": v for k, v in attrs.items()})
    return SimpleNamespace(
        number=number, state=SimpleNamespace(name=state), value=value, params={},
        datetime_complete=dt.datetime(2026, 1, 1, 0, 0, second), user_attrs=user,
    )  # fmt: skip


def test_a_probed_node_counts_its_probe_once_and_its_own_value() -> None:
    """A tree node ranked on a cooldown probe: its samples_trained count the probe already (the
    benchmark adds nothing), and its model is the one at its rung (`rung_value`), not the
    probe's throwaway branch. Completion order decides, not number."""
    trials = [
        _trial(1, "COMPLETE", 0.5, 100, 5, probe_value=0.5, rung_value=0.8),
        _trial(0, "COMPLETE", 0.9, 100, 3, probe_value=0.9, rung_value=1.2),
        _trial(2, "PRUNED", 0.1, 40, 7),  # a pruned node's value never counts
        _trial(3, "COMPLETE", 0.6, 200, 9),  # a leaf: no probe
    ]
    start = dt.datetime(2026, 1, 1)
    points = records.curve(trials, direction="minimize", started=start)
    assert [p.trial for p in points] == [0, 1, 2, 3]
    assert [p.samples for p in points] == [100, 200, 240, 440]
    assert [p.steps for p in points] == [10, 20, 24, 44]
    assert [p.value for p in points] == [1.2, 0.8, 0.1, 0.6]
    assert [p.best for p in points] == [1.2, 0.8, 0.8, 0.6]
    assert [p.wall_s for p in points] == [3.0, 5.0, 7.0, 9.0]


def test_the_winner_s_lineage_says_whether_it_forked_with_new_values() -> None:
    """A root's `child` is its place among the roots, not a fork; child 0 continues, so only a
    child > 0 below the roots counts; the winner is the best complete trial, ties the lowest."""

    def t(number: int, g: int, parent: int | None, child: int, value: float | None,
          state: str = "COMPLETE"):  # fmt: skip
        return _trial(number, state, value, 10, number, generation=g, parent_trial=parent,
                      child=child)  # fmt: skip

    trials = [t(0, 0, None, 0, 0.9), t(1, 0, None, 1, 0.5), t(2, 1, 1, 0, 0.4),
              t(3, 1, 1, 1, 0.45), t(4, 2, 2, 0, 0.3), t(5, 2, 3, 1, 0.3),
              t(6, 2, 2, 1, None, "PRUNED")]  # fmt: skip
    assert arms.winner_lineage(trials, "minimize") == {
        "winner": 4,
        "winner_generation": 2,
        "winner_forks": 0,
        "winner_path": [1, 2, 4],
    }
    trials[5].value = 0.2  # the forked lineage wins: one fork on its path (trial 3), two at 5
    assert arms.winner_lineage(trials, "minimize")["winner_forks"] == 2
    assert arms.grown(trials) == [[2, 2, 0], [2, 2, 0], [3, 2, 1]]
