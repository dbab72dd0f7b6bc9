"""Statistical process control of a metric over frames: the individuals (X) chart and its run rules.

A coating line drifts (powder feed, nozzle wear, stand-off distance) long before a part fails
its verdict rule; an individuals chart of porosity or unmelted fraction per frame shows the
drift while every frame still passes. Each frame is one measurement, so the chart is the
individuals chart: centre line = mean of a baseline window the user picked as "the process
as it should be", sigma estimated from the *average moving range* of that window,
`sigma = MR-bar / d2` with `d2 = 1.128` (the bias constant for ranges of n = 2), as
individuals charts are defined (Montgomery, *Introduction to Statistical Quality Control*,
sec. 6.4; ASTM E2587). The moving range is used rather than the sample standard deviation
because it measures short-term, frame-to-frame variation: a baseline that itself contains a
slow drift would inflate the standard deviation and hide the very shifts the chart is for.
Control limits are centre +/- 3 sigma.

Run rules tell special causes from noise. The Western Electric rules (1956) `WE1`-`WE4` and
the Nelson rules (1984) `N1`-`N8` are both evaluated, each break reported with the rule id,
its name, the indices of the points that make it up and its direction. A pattern that keeps
holding over successive windows (a run of 12 where 9 are enough) is one break, not four:
windows that overlap or touch merge, so a break grows at its end as frames arrive and its
first index stays put (what an alarm is keyed on). Comparisons are strict: a point exactly
on a zone edge is not beyond it, a point exactly on the centre line is on neither side, and
two equal consecutive values neither rise nor fall.

Several fields of one part are one sample (ASTM E2109): `sample_means` gives each part's mean
and 95 % confidence interval through `inspectd.analysis.fieldstats`, the same figures the daemon reports.

Pure numpy, no I/O: the web UI and the alarm monitor read the journal and call these.

Example:
    >>> limits = control_limits([10.0, 10.2, 9.9, 10.1, 9.8, 10.0])
    >>> round(limits.centre, 3), round(limits.sigma, 4), round(limits.ucl, 3)
    (10.0, 0.2128, 10.638)
    >>> [(b.rule, b.indices) for b in find_rule_breaks([10.0, 10.1, 11.0, 9.9], limits)]
    [('N1', (2,))]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from inspectd.analysis.fieldstats import summarize_fields

D2_MOVING_RANGE = 1.128  # E[range of 2 normal values] / sigma

RULE_NAMES = {
    "WE1": "one point beyond 3 sigma",
    "WE2": "2 of 3 points beyond 2 sigma on one side",
    "WE3": "4 of 5 points beyond 1 sigma on one side",
    "WE4": "8 points in a row on one side of the centre line",
    "N1": "one point beyond 3 sigma",
    "N2": "9 points in a row on one side of the centre line",
    "N3": "6 points in a row steadily rising or falling",
    "N4": "14 points in a row alternating up and down",
    "N5": "2 of 3 points beyond 2 sigma on one side",
    "N6": "4 of 5 points beyond 1 sigma on one side",
    "N7": "15 points in a row within 1 sigma of the centre line",
    "N8": "8 points in a row beyond 1 sigma, on both sides",
}
WESTERN_ELECTRIC = ("WE1", "WE2", "WE3", "WE4")
NELSON = ("N1", "N2", "N3", "N4", "N5", "N6", "N7", "N8")
RULE_SETS = {"nelson": NELSON, "western_electric": WESTERN_ELECTRIC}


class BaselineError(ValueError):
    """The baseline window cannot give control limits (too few points, or no variation at all)."""


@dataclass(frozen=True)
class ControlLimits:
    """Centre line and sigma of an individuals chart, from `n` baseline points.

    `mr_bar` is the average moving range of the baseline; `sigma = mr_bar / 1.128`.
    """

    centre: float
    sigma: float
    mr_bar: float
    n: int

    @property
    def ucl(self) -> float:
        return self.centre + 3.0 * self.sigma

    @property
    def lcl(self) -> float:
        return self.centre - 3.0 * self.sigma

    def zone_edges(self) -> dict[str, float]:
        """The lines a chart draws: centre, +/-1, +/-2 sigma (zone C/B and B/A edges), +/-3 sigma."""
        c, s = self.centre, self.sigma
        return {"lcl": c - 3 * s, "minus_2sigma": c - 2 * s, "minus_1sigma": c - s, "centre": c,
                "plus_1sigma": c + s, "plus_2sigma": c + 2 * s, "ucl": c + 3 * s}

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready: the fields plus UCL and LCL."""
        return {**asdict(self), "ucl": self.ucl, "lcl": self.lcl}


@dataclass(frozen=True)
class RuleBreak:
    """One break of a run rule: which rule, the points that make it up, and which way it points.

    `indices` are positions in the series passed in, first to last (for the count rules
    `WE2`/`WE3`/`N5`/`N6` from the first to the last point beyond the zone, the points
    between included). `direction`: "high" / "low" (beyond or on one side of the centre
    line), "rising" / "falling" (N3), None (N4, N7, N8: no one direction).
    """

    rule: str
    name: str
    indices: tuple[int, ...]
    direction: str | None

    @property
    def first(self) -> int:
        return self.indices[0]

    @property
    def last(self) -> int:
        return self.indices[-1]

    def to_dict(self) -> dict[str, object]:
        return {"rule": self.rule, "name": self.name, "indices": list(self.indices), "direction": self.direction}


_Rule = Callable[[np.ndarray, np.ndarray, str], list[RuleBreak]]


@dataclass(frozen=True)
class SampleMean:
    """The mean of one part's fields with its 95 % confidence interval (ASTM E2109).

    `ci95_low`/`ci95_high` are None for a part with a single field (no spread to estimate).
    """

    part_id: str
    indices: tuple[int, ...]
    n: int
    mean: float
    sd: float | None
    ci95_low: float | None
    ci95_high: float | None
    relative_accuracy_pct: float | None

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "indices": list(self.indices)}


def control_limits(baseline: Sequence[float] | np.ndarray) -> ControlLimits:
    """Individuals-chart limits from baseline values: mean, and sigma = average moving range / 1.128.

    Raises `BaselineError` for fewer than 2 finite values or a baseline without variation
    (every moving range 0: the limits would collapse onto the centre line). 20 or more
    points give usable limits; fewer still work, with wider uncertainty.

    Example:
        >>> control_limits([1.0, 2.0, 1.0, 2.0]).mr_bar
        1.0
    """
    values = _as_series(baseline)
    if values.size < 2:
        msg = f"the baseline needs at least 2 points with a value, it has {values.size}"
        raise BaselineError(msg)
    mr_bar = float(np.mean(np.abs(np.diff(values))))
    if not mr_bar > 0.0:
        msg = "the baseline's values do not vary at all (every moving range is 0): pick a longer or other window"
        raise BaselineError(msg)
    return ControlLimits(centre=float(np.mean(values)), sigma=mr_bar / D2_MOVING_RANGE, mr_bar=mr_bar,
                         n=int(values.size))


def zones(values: Sequence[float] | np.ndarray, limits: ControlLimits) -> np.ndarray:
    """Signed zone of each point: +/-1 zone C (within 1 sigma), 2 zone B, 3 zone A, 4 beyond 3 sigma; 0 on the centre.

    Example:
        >>> zones([10.0, 10.1, 9.7, 10.45, 11.0], ControlLimits(10.0, 0.2, 0.2256, 20)).tolist()
        [0, 1, -2, 3, 4]
    """
    z = _z_scores(_as_series(values), limits)
    return np.sign(z).astype(int) * np.minimum(np.ceil(np.abs(z)), 4).astype(int)


def find_rule_breaks(values: Sequence[float] | np.ndarray, limits: ControlLimits,
                     rules: Iterable[str] = NELSON) -> list[RuleBreak]:
    """Every break of the `rules` (ids from `RULE_NAMES`) in `values`, ordered by first index, then rule.

    Example:
        >>> limits = ControlLimits(centre=0.0, sigma=1.0, mr_bar=1.128, n=20)
        >>> [(b.rule, b.first, b.last, b.direction)
        ...  for b in find_rule_breaks([0.1, 0.5, 1.0, 1.6, 2.2, 2.9, -0.3], limits, rules=("N3",))]
        [('N3', 0, 5, 'rising')]
    """
    series = _as_series(values)
    z = _z_scores(series, limits)
    found: list[RuleBreak] = []
    for rule in rules:
        if rule not in RULE_NAMES:
            msg = f"unknown rule {rule!r}; known: {', '.join(RULE_NAMES)}"
            raise ValueError(msg)
        found += _RULES[rule](series, z, rule)
    return sorted(found, key=lambda b: (b.first, b.rule))


def sample_means(part_ids: Sequence[str | None], values: Sequence[float] | np.ndarray) -> list[SampleMean]:
    """Each part's mean over its fields, with its 95 % CI, in the order parts first appear.

    Frames without a part id are left out (they belong to no sample).

    Example:
        >>> [(s.part_id, s.n, s.mean, round(s.ci95_high, 3))
        ...  for s in sample_means(["P1", "P1", "P1", None], [1.0, 2.0, 3.0, 9.0])]
        [('P1', 3, 2.0, 4.484)]
    """
    series = _as_series(values)
    if len(part_ids) != series.size:
        msg = f"{len(part_ids)} part ids for {series.size} values"
        raise ValueError(msg)
    members: dict[str, list[int]] = {}
    for index, part_id in enumerate(part_ids):
        if part_id is not None:
            members.setdefault(str(part_id), []).append(index)
    samples = []
    for part_id, indices in members.items():
        stat = summarize_fields([{"value": float(series[i])} for i in indices], names=("value",))["value"]
        assert stat.mean is not None  # every value is finite (checked by _as_series)
        samples.append(SampleMean(part_id=part_id, indices=tuple(indices), n=stat.n, mean=stat.mean,
                                  sd=stat.sd if stat.n > 1 else None, ci95_low=stat.ci95_low,
                                  ci95_high=stat.ci95_high, relative_accuracy_pct=stat.relative_accuracy_pct))
    return samples


# ---- the rules -------------------------------------------------------------------------------


def _as_series(values: Sequence[float] | np.ndarray) -> np.ndarray:
    series = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(series)):
        msg = "SPC series must hold finite numbers only (leave frames without a value out)"
        raise ValueError(msg)
    return series


def _z_scores(series: np.ndarray, limits: ControlLimits) -> np.ndarray:
    if not (math.isfinite(limits.sigma) and limits.sigma > 0):
        msg = f"control limits need a positive sigma, got {limits.sigma}"
        raise ValueError(msg)
    return (series - limits.centre) / limits.sigma


def _windows_where(fires: np.ndarray, length: int) -> list[tuple[int, int]]:
    """(start, end) inclusive of each window of `length` points whose flag (indexed by start) is set."""
    return [(int(start), int(start) + length - 1) for start in np.flatnonzero(fires)]


def _merge(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Windows that overlap or touch become one span: one break, growing at its end."""
    merged: list[list[int]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _spans(rule: str, windows: list[tuple[int, int]], direction: str | None) -> list[RuleBreak]:
    return [RuleBreak(rule, RULE_NAMES[rule], tuple(range(start, end + 1)), direction)
            for start, end in _merge(windows)]


def _count_rule(k: int, length: int, beyond_sigma: float) -> _Rule:
    """k of `length` points in a row beyond `beyond_sigma` on the same side (WE1-3, N1, N5, N6)."""
    def evaluate(_series: np.ndarray, z: np.ndarray, rule: str) -> list[RuleBreak]:
        breaks = []
        if z.size < length:
            return breaks
        for direction, flagged in (("high", z > beyond_sigma), ("low", z < -beyond_sigma)):
            counts = sliding_window_view(flagged, length).sum(axis=1)
            for start, end in _merge(_windows_where(counts >= k, length)):
                points = np.flatnonzero(flagged[start:end + 1]) + start  # trim to the points beyond the zone
                breaks.append(RuleBreak(rule, RULE_NAMES[rule], tuple(range(int(points[0]), int(points[-1]) + 1)),
                                        direction))
        return breaks
    return evaluate


def _same_side_rule(length: int) -> _Rule:
    """`length` points in a row strictly on one side of the centre line (WE4, N2)."""
    def evaluate(_series: np.ndarray, z: np.ndarray, rule: str) -> list[RuleBreak]:
        if z.size < length:
            return []
        breaks = []
        for direction, side in (("high", z > 0), ("low", z < 0)):
            breaks += _spans(rule, _windows_where(sliding_window_view(side, length).all(axis=1), length), direction)
        return breaks
    return evaluate


def _trend_rule(length: int) -> _Rule:
    """`length` points in a row each strictly above (or below) the one before (N3)."""
    def evaluate(series: np.ndarray, _z: np.ndarray, rule: str) -> list[RuleBreak]:
        if series.size < length:
            return []
        steps = np.diff(series)
        breaks = []
        for direction, moving in (("rising", steps > 0), ("falling", steps < 0)):
            fires = sliding_window_view(moving, length - 1).all(axis=1)
            breaks += _spans(rule, _windows_where(fires, length), direction)
        return breaks
    return evaluate


def _alternating_rule(length: int) -> _Rule:
    """`length` points in a row, each step going the other way from the one before (N4)."""
    def evaluate(series: np.ndarray, _z: np.ndarray, rule: str) -> list[RuleBreak]:
        if series.size < length:
            return []
        signs = np.sign(np.diff(series))
        turns = (signs[:-1] * signs[1:]) < 0  # turns[i]: step i+1 goes against step i
        fires = sliding_window_view(turns, length - 2).all(axis=1)
        return _spans(rule, _windows_where(fires, length), None)
    return evaluate


def _within_one_sigma_rule(length: int) -> _Rule:
    """`length` points in a row strictly within 1 sigma (N7: stratification, limits too wide)."""
    def evaluate(_series: np.ndarray, z: np.ndarray, rule: str) -> list[RuleBreak]:
        if z.size < length:
            return []
        return _spans(rule, _windows_where(sliding_window_view(np.abs(z) < 1, length).all(axis=1), length), None)
    return evaluate


def _outside_one_sigma_rule(length: int) -> _Rule:
    """`length` points in a row strictly beyond 1 sigma, some above and some below (N8: mixture)."""
    def evaluate(_series: np.ndarray, z: np.ndarray, rule: str) -> list[RuleBreak]:
        if z.size < length:
            return []
        outside = sliding_window_view(np.abs(z) > 1, length).all(axis=1)
        above = sliding_window_view(z > 1, length).any(axis=1)
        below = sliding_window_view(z < -1, length).any(axis=1)
        return _spans(rule, _windows_where(outside & above & below, length), None)
    return evaluate


_RULES = {
    "WE1": _count_rule(1, 1, 3.0), "WE2": _count_rule(2, 3, 2.0), "WE3": _count_rule(4, 5, 1.0),
    "WE4": _same_side_rule(8),
    "N1": _count_rule(1, 1, 3.0), "N2": _same_side_rule(9), "N3": _trend_rule(6), "N4": _alternating_rule(14),
    "N5": _count_rule(2, 3, 2.0), "N6": _count_rule(4, 5, 1.0), "N7": _within_one_sigma_rule(15),
    "N8": _outside_one_sigma_rule(8),
}
