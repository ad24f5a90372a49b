"""The branch plot's colour scale as data: objective value -> position on the colour map.

Pure (no matplotlib): `hpsearch.report.plot.data` stores the stops, the layout draws with them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

Point = tuple[float, float]

# The share of the colour map for values worse than every finished trial (pruned ones mostly):
# enough to tell them apart from each other, little enough that the finished ones keep most of it.
BELOW_SHARE = 0.3


def color_range(values: Sequence[tuple[str, float | None]]) -> tuple[float, float]:
    """Min and max objective of the COMPLETE trials, from (state, colour value) pairs.

    Pruned trials' values were measured earlier in training and would stretch the scale until
    every finished trial looks alike; they only count when fewer than two trials are complete.
    Values better than the range take the good end's colour; worse ones, see `color_stops`.
    """
    finite = [v for state, v in values if state == "COMPLETE" and v is not None]
    if len(set(finite)) < 2:
        finite += [v for state, v in values if state == "PRUNED" and v is not None]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if lo == hi:
        pad = abs(lo) * 0.05 or 0.5
        return lo - pad, hi + pad
    return lo, hi


def color_stops(
    values: Iterable[float | None], vmin: float, vmax: float, maximize: bool
) -> tuple[tuple[Point, ...], int]:
    """The (value, position) stops of the colour scale, and how many of `values` (one per
    trial) are worse than the finished range: those get the bad end's `BELOW_SHARE` of the map,
    one step per distinct value by rank (their spread says little: they were measured at
    different points of training; their order does). Clipped at one end, they all had the same
    colour."""
    given = [v for v in values if v is not None]
    distinct = set(given)
    worse = sum(v < vmin for v in given) if maximize else sum(v > vmax for v in given)
    if maximize:
        below = sorted(v for v in distinct if v < vmin)  # worst first
        if not below:
            return ((vmin, 0.0), (vmax, 1.0)), 0
        ranked = [(v, BELOW_SHARE * i / len(below)) for i, v in enumerate(below)]
        return (*ranked, (vmin, BELOW_SHARE), (vmax, 1.0)), worse
    above = sorted(v for v in distinct if v > vmax)  # worst last
    if not above:
        return ((vmin, 0.0), (vmax, 1.0)), 0
    top = 1.0 - BELOW_SHARE
    ranked = [(v, top + BELOW_SHARE * (i + 1) / len(above)) for i, v in enumerate(above)]
    return ((vmin, 0.0), (vmax, top), *ranked), worse


def interpolate(stops: Sequence[Point], value: float | None) -> float | None:
    """`value` mapped through the piecewise linear `stops` (sorted by value), clipped."""
    if value is None or not math.isfinite(value) or not stops:
        return None
    if value <= stops[0][0]:
        return stops[0][1]
    k = bisect.bisect_left(stops, value, key=lambda stop: stop[0])
    if k == len(stops):
        return stops[-1][1]
    (x0, y0), (x1, y1) = stops[k - 1], stops[k]
    return y0 + (y1 - y0) * (value - x0) / (x1 - x0)
