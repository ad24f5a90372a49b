"""The tables and the figure, from runs alone (so `--from JSON` redraws them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from efficiency import analysis as an
from efficiency.records import Run

NAMES = {
    "tpe-median": "TPE + MedianPruner (classic)",
    "tpe-hyperband": "TPE + HyperbandPruner",
    "tpe-sha": "TPE + SuccessiveHalvingPruner",
    "ray-pbt": "Ray Tune PBT",
    "tree-sh": "tree, children only continue",
    "tree": "fork tree at B",
    "tree-half": "fork tree at B/2",
    "fork": "hpsearch single fork",
}
COLOURS = {"tpe-median": "#4c72b0", "tpe-hyperband": "#8172b3", "tpe-sha": "#64b5cd",
           "ray-pbt": "#55a868", "tree-sh": "#937860", "tree": "#c44e52",
           "tree-half": "#da8bc3", "fork": "#dd8452"}  # fmt: skip
TREE_COLOURS = ["#8c8c8c", "#ccb974", "#1b9e77", "#d95f02", "#7570b3", "#e7298a"]


def name(arm: str) -> str:
    if arm in NAMES:
        return NAMES[arm]
    base, _, keys = arm.partition("[")
    return f"{NAMES.get(base, base)} [{keys}" if keys else arm


def colour(arm: str, arms: Sequence[str]) -> str:
    if arm in COLOURS:
        return COLOURS[arm]
    trees = [a for a in arms if a not in COLOURS]
    return TREE_COLOURS[trees.index(arm) % len(TREE_COLOURS)]


def _f(x: float | None, spec: str = ".4f") -> str:
    return "–" if x is None else format(x, spec)


def _r(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.2f}"


def _vs(d: dict[str, Any]) -> str:
    parts = [] if d["ratio"] is None else [f"{d['ratio']:.2f} ({d['paired']})"]
    if d["only_mine"]:
        parts.append(f"+{d['only_mine']} only this arm")
    if d["only_theirs"]:
        parts.append(f"{d['only_theirs']} only the baseline")
    return ", ".join(parts) or "neither reached"


def workload_tables(runs: Sequence[Run], w: str, target: float) -> list[str]:
    mine = [r for r in runs if r.workload == w]
    direction, metric = mine[0].direction, mine[0].metric
    reach = an.reaches(runs, w, target)
    arms = an.order_of(mine, "arm")
    by = {a: [r for r in reach if r.arm == a] for a in arms}
    classic = by.get(an.CLASSIC, [])
    seeds = sorted({r.seed for r in mine})
    full = mine[0].full_samples
    lines = [
        f"### {w} ({metric}, {direction}; a full run is {full} samples)", "",
        f"Target: {_f(target)}, the median over {len(classic)} seeds of classic's final best.", "",
        "| arm | seeds reaching the target | at ≤ 1/2 of classic's samples "
        "| samples to target ÷ classic's (median) | per seed | whole search ÷ classic's "
        "| final best: median [min, max] | sd |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: |",
    ]  # fmt: skip
    for a in arms:
        s = an.arm_summary(by[a], classic, direction)
        per = " ".join(_r(x) for x in s["ratios"])
        lines.append(
            f"| {name(a)} | {s['reached']}/{s['seeds']} | {s['reached_half']}/{s['seeds']} "
            f"| {_r(s['ratio'])} | {per} | {_f(s['total_ratio'], '.2f')} "
            f"| {_f(s['final_median'])} [{_f(s['final_min'])}, {_f(s['final_max'])}] "
            f"| {_f(s['final_sd'])} |"
        )
    others = [a for a in arms if a not in an.NAMES_BASE]
    if others:
        lines += [
            "",
            "Samples to the target, seed by seed, of each hpsearch arm over each "
            "baseline's (median over the seeds where both reached it, their number in "
            "brackets; below 1: fewer samples than the baseline):",
            "",
            "| arm | "
            + " | ".join(name(b) for b in an.NAMES_BASE if b in by)
            + " | the issue's target |",
            "| --- | " + " | ".join("---" for b in an.NAMES_BASE if b in by) + " | --- |",
        ]
        for a in others:
            cells = [_vs(an.against(by[a], by[b])) for b in an.NAMES_BASE if b in by]
            s = an.arm_summary(by[a], classic, direction)
            v = an.verdict(s, an.against(by[a], by[an.PBT]) if an.PBT in by else None)
            ok = [
                f"≤ 1/2 in ≥ {v['need']} seeds: {'yes' if v['half'] else 'no'}",
                f"quality kept: {'yes' if v['quality'] else 'no'}",
            ]
            ok += [f"earlier than {b}: {_yn(an.earlier(an.against(by[a], by[b])))}"
                   for b in an.EARLIER_THAN if b in by and b != a]  # fmt: skip
            lines.append(f"| {name(a)} | " + " | ".join(cells) + " | " + "; ".join(ok) + " |")
    lines += ["", "Per seed: final best (samples to the target ÷ the same seed's classic "
              "search; – : never reached)", "",
              "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "| --- |" + " ---: |" * len(seeds)]  # fmt: skip
    for a in arms:
        cells = {r.seed: f"{_f(r.final_best)} ({_r(r.ratio) if r.ratio else '–'})" for r in by[a]}
        lines.append(f"| {name(a)} | " + " | ".join(cells.get(s, "") for s in seeds) + " |")
    lines += shapes(mine, arms)
    return lines


SHAPE_KEYS = ("budget", "roots", "rungs", "keep", "children", "probe", "pruner", "planned",
              "planned_cost")  # fmt: skip


def shapes(mine: Sequence[Run], arms: Sequence[str]) -> list[str]:
    """Each tree arm's shape (as its budget made it) and how it grew, seed by seed; and how
    often its winner forked with new values; the other arms' settings in a line."""
    trees = [a for a in arms if any("planned" in r.settings for r in mine if r.arm == a)]
    lines = []
    if trees:
        lines += ["", "The trees: the shape each budget produced (generation sizes as planned, "
                  "the cost in full runs as planned), as grown (per generation: nodes / complete / "
                  "pruned), what was spent, and the winner's path (its generation; forks with new "
                  "values on its path):", "",
                  "| arm | seed | shape | planned | grown | spent | winner |",
                  "| --- | ---: | --- | --- | --- | ---: | --- |"]  # fmt: skip
        for a in trees:
            for r in sorted((r for r in mine if r.arm == a), key=lambda r: r.seed):
                st = r.settings
                shape = (f"B {st.get('budget')}: {st.get('roots')} roots, rungs "
                         f"{'/'.join(f'{x:g}' for x in st.get('rungs', []))}, keep "
                         f"{st.get('keep')}, children {st.get('children')}"
                         + (f", probe {st['probe']}" if st.get("probe") else "")
                         + f", {st.get('pruner')}")  # fmt: skip
                sizes = " → ".join(map(str, st.get("planned", [])))
                planned = f"{sizes} ({st.get('planned_cost')})"
                grown = " → ".join("/".join(map(str, g)) for g in st.get("grown", []))
                win = (f"trial {st.get('winner')} (gen {st.get('winner_generation')}; "
                       f"{st.get('winner_forks')} fork{'s' if st.get('winner_forks') != 1 else ''})"
                       if "winner" in st else "–")  # fmt: skip
                lines.append(f"| {name(a)} | {r.seed} | {shape} | {planned} | {grown} "
                             f"| {r.total_samples / r.full_samples:.2f} | {win} |")  # fmt: skip
        forked = [(a, an.forked_winners([r for r in mine if r.arm == a])) for a in trees]
        lines += ["", "Winners forked with new values (a child other than the one that "
                  "continues, on the winner's path), per arm: "
                  + "; ".join(f"{name(a)} {k}/{n}" for a, (k, n) in forked)]  # fmt: skip
    others = [(a, next(r.settings for r in mine if r.arm == a)) for a in arms if a not in trees]
    lines += ["", "Arm settings: " + "; ".join(
        f"{name(a)}: " + ", ".join(f"{k} {v}" for k, v in st.items() if k != "trials")
        for a, st in others if st), ""]  # fmt: skip
    return lines


def _yn(x: bool | None) -> str:
    return "–" if x is None else "yes" if x else "no"


def markdown(runs: Sequence[Run]) -> str:
    lines: list[str] = []
    targets = an.targets(runs)
    for w, target in targets.items():
        lines += workload_tables(runs, w, target)
    lines += settings_table(runs, targets)
    return "\n".join(lines)


def settings_table(runs: Sequence[Run], targets: dict[str, float]) -> list[str]:
    """Every tree setting measured, side by side over the workloads: seeds reaching the target
    (at <= 1/2 of classic's samples), the median samples to it and the whole tree, both as
    fractions of classic's, and the median final best."""
    trees = [a for a in an.order_of(runs, "arm") if a not in an.NAMES_BASE]
    if not trees:
        return []
    ws = list(targets)
    lines = [
        "### The tree's settings, side by side", "",
        "Per workload: seeds reaching the target (of them at ≤ 1/2 of classic's samples); "
        "median samples to the target ÷ classic's; the whole tree ÷ classic's; median final best "
        "(classic's in the header).", "",
        "| setting | " + " | ".join(f"{w} (classic {_f(targets[w])})" for w in ws) + " |",
        "| --- |" + " --- |" * len(ws),
    ]  # fmt: skip
    for a in trees:
        cells = []
        for w in ws:
            reach = [r for r in an.reaches(runs, w, targets[w]) if r.arm == a]
            if not reach:
                cells.append("")
                continue
            classic = [r for r in an.reaches(runs, w, targets[w]) if r.arm == an.CLASSIC]
            direction = next(r.direction for r in runs if r.workload == w)
            s = an.arm_summary(reach, classic, direction)
            cells.append(f"{s['reached']}/{s['seeds']} ({s['reached_half']}); {_r(s['ratio'])}; "
                         f"{_f(s['total_ratio'], '.2f')}; {_f(s['final_median'])}")  # fmt: skip
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def draw(runs: Sequence[Run], path: str) -> None:
    """One panel per workload: best so far against cumulative samples (in full runs), the
    median over seeds as a line and min–max as a band, per arm; the target dashed, and half of
    classic's median budget dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tg = an.targets(runs)
    workloads = an.order_of(runs, "workload")
    cols = max(1, len(workloads))
    fig, axes = plt.subplots(1, cols, figsize=(6.2 * cols, 5.4), squeeze=False)
    for ax, w in zip(axes[0], workloads, strict=False):
        target = tg.get(w)
        mine = [r for r in runs if r.workload == w]
        arms = an.order_of(mine, "arm")
        end = max(r.total_samples / r.full_samples for r in mine)
        xs = [end * i / 400 for i in range(401)]
        for a in arms:
            b = an.bands([r for r in mine if r.arm == a], xs)
            c = colour(a, arms)
            pts = [
                (x, m, lo, hi)
                for x, m, lo, hi in zip(xs, b["median"], b["min"], b["max"], strict=True)
                if m is not None
            ]
            if not pts:
                continue
            x, m, lo, hi = zip(*pts, strict=True)
            ax.step(x, m, where="post", color=c, lw=1.6, label=name(a))
            ax.fill_between(x, lo, hi, step="post", color=c, alpha=0.1, lw=0)
        if target is not None:
            ax.axhline(
                target, color="black", ls="--", lw=1, label="target (classic's median final)"
            )
        classic = [r.total_samples / r.full_samples for r in mine if r.arm == an.CLASSIC]
        if classic:
            half = an.HALF * sorted(classic)[len(classic) // 2]
            ax.axvline(half, color="black", ls=":", lw=1, label="1/2 of classic's samples")
        lows = [r.final_best for r in mine if r.final_best is not None]
        if lows and target is not None:
            # from the best final to a few times its distance to the target: where the arms
            # differ, not the first minutes of training
            lo, sign = (min(lows), 1) if mine[0].direction == "minimize" else (max(lows), -1)
            span = abs(target - lo) or abs(target) * 0.1 or 1.0
            ends = sorted([lo - sign * 0.15 * span, target + sign * 4 * span])
            ax.set_ylim(*ends)
        ax.set_xlabel("cumulative training samples, in full runs from scratch")
        ax.set_ylabel(f"best {mine[0].metric} so far")
        better = "higher" if mine[0].direction == "maximize" else "lower"
        ax.set_title(f"{w}: median over seeds, band min–max ({better} is better)")
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * (1 + len(handles) // 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
