"""The individuals chart and its run rules against hand-made series (sigma 1 around 0, so values are z).

Each rule gets a series built so that it breaks exactly where planted, plus a near miss that
must not break it (one point short, opposite sides, a value exactly on a zone edge).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from inspectd.analysis.fieldstats import summarize_fields
from inspectd.reports.spc import (
    NELSON,
    RULE_NAMES,
    WESTERN_ELECTRIC,
    BaselineError,
    ControlLimits,
    control_limits,
    find_rule_breaks,
    sample_means,
    zones,
)

UNIT = ControlLimits(centre=0.0, sigma=1.0, mr_bar=1.128, n=20)
ALL_RULES = NELSON + WESTERN_ELECTRIC
# In control under every rule: sides change, never 6 steps one way, 1.5 sigma points often
# enough that 15 in a row within 1 sigma never happens, no alternation longer than 3 steps.
QUIET_CYCLE = (0.5, 0.2, -0.4, 1.5, -0.6, -0.3, 0.4, -1.5, 0.6, 0.1)


def quiet(length: int) -> np.ndarray:
    return np.resize(np.array(QUIET_CYCLE), length)


def planted(length: int, at: int, values: list[float], **single: float) -> np.ndarray:
    series = quiet(length)
    series[at:at + len(values)] = values
    for key, value in single.items():
        series[int(key.lstrip("i"))] = value
    return series


def spans(series: np.ndarray, rule: str) -> list[tuple[int, int, str | None]]:
    breaks = find_rule_breaks(series, UNIT, rules=(rule,))
    for found in breaks:
        assert found.indices == tuple(range(found.first, found.last + 1))
        assert found.name == RULE_NAMES[rule]
    return [(b.first, b.last, b.direction) for b in breaks]


def test_limits_are_the_mean_and_the_average_moving_range_over_1_128():
    baseline = [2.0, 2.4, 2.1, 2.6, 2.2, 2.3]
    limits = control_limits(baseline)
    mr_bar = (0.4 + 0.3 + 0.5 + 0.4 + 0.1) / 5
    assert limits.centre == pytest.approx(sum(baseline) / 6)
    assert limits.mr_bar == pytest.approx(mr_bar)
    assert limits.sigma == pytest.approx(mr_bar / 1.128)
    assert (limits.ucl, limits.lcl) == pytest.approx((limits.centre + 3 * mr_bar / 1.128,
                                                      limits.centre - 3 * mr_bar / 1.128))
    edges = limits.zone_edges()
    assert edges["plus_2sigma"] - edges["centre"] == pytest.approx(2 * limits.sigma)
    assert limits.n == 6 and limits.to_dict()["ucl"] == pytest.approx(limits.ucl)


def test_a_slow_drift_in_the_baseline_does_not_inflate_sigma_as_the_sd_would():
    drifting = np.linspace(0.0, 10.0, 21) + np.resize([0.1, -0.1], 21)
    limits = control_limits(drifting)
    assert limits.sigma < 0.6 < float(np.std(drifting, ddof=1))


@pytest.mark.parametrize(("baseline", "says"), [([1.0], "at least 2"), ([], "at least 2"),
                                                 ([3.0, 3.0, 3.0], "do not vary")])
def test_a_baseline_that_cannot_give_limits_says_why(baseline, says):
    with pytest.raises(BaselineError, match=says):
        control_limits(baseline)


def test_non_finite_values_are_refused_not_silently_charted():
    with pytest.raises(ValueError, match="finite"):
        find_rule_breaks([0.0, math.nan, 1.0], UNIT)


def test_zones_are_signed_and_strict_at_their_edges():
    assert zones([0.0, 0.3, 1.0, 1.01, -2.0, -2.5, 3.0, 3.2, -7.0], UNIT).tolist() == [0, 1, 1, 2, -2, -3, 3, 4, -4]


def test_a_quiet_series_breaks_no_rule_of_either_set():
    assert find_rule_breaks(quiet(80), UNIT, rules=ALL_RULES) == []


@pytest.mark.parametrize("rule", ["N1", "WE1"])
def test_rule_1_one_point_beyond_3_sigma_each_side_not_on_the_limit(rule):
    series = planted(40, 0, [], i20=3.5, i25=3.0, i26=-3.0, i35=-3.2)
    assert spans(series, rule) == [(20, 20, "high"), (35, 35, "low")]


def test_rule_1_consecutive_points_beyond_the_limit_are_one_break():
    series = planted(30, 10, [3.4, 3.9, 4.2])
    assert spans(series, "N1") == [(10, 12, "high")]


@pytest.mark.parametrize("rule", ["N5", "WE2"])
def test_2_of_3_beyond_2_sigma_same_side_only(rule):
    series = planted(40, 0, [], i10=2.5, i12=2.1,          # breaks: 10..12
                     i20=2.5, i21=-2.5,                      # opposite sides
                     i30=2.0, i31=2.5)                       # 2.0 is on the edge, not beyond
    assert spans(series, rule) == [(10, 12, "high")]


@pytest.mark.parametrize("rule", ["N6", "WE3"])
def test_4_of_5_beyond_1_sigma_same_side_only(rule):
    series = planted(40, 10, [1.2, 1.5, 0.3, 1.1, 1.8])
    series[30:35] = [-1.2, -1.5, 0.0, -1.1, 0.2]             # 3 of 5 only
    assert spans(series, rule) == [(10, 14, "high")]


def test_we4_8_in_a_row_on_one_side_and_7_do_not():
    series = planted(40, 10, [0.2] * 8, i9=-0.2, i18=-0.2)
    series[25:32] = -0.3
    series[24] = series[32] = 0.3
    assert spans(series, "WE4") == [(10, 17, "high")]


def test_n2_9_in_a_row_on_one_side_and_8_do_not():
    series = planted(50, 10, [0.3] * 9, i9=-0.2, i19=-0.2)
    series[30:38] = -0.3
    series[29] = series[38] = 0.3
    assert spans(series, "N2") == [(10, 18, "high")]


def test_a_point_on_the_centre_line_ends_a_run():
    series = planted(40, 10, [0.3] * 5 + [0.0] + [0.3] * 5, i9=-0.2, i21=-0.2)
    assert spans(series, "N2") == []


def test_a_longer_run_is_one_break_covering_all_of_it_and_separate_runs_are_two():
    series = planted(60, 10, [0.4] * 12, i9=-0.2, i22=-0.2)
    series[40:49] = -0.4
    series[39] = series[49] = 0.2
    assert spans(series, "N2") == [(10, 21, "high"), (40, 48, "low")]


def test_n3_6_points_rising_an_equal_step_breaks_a_trend_8_falling_are_one_break():
    series = planted(60, 10, [-1.0, -0.5, 0.0, 0.4, 0.9, 1.3], i9=1.0, i16=-0.5)
    series[25:32] = [1.0, 0.5, 0.5, 0.0, -0.5, -1.0, -1.2]    # equal step: only 5 falling
    series[32] = 0.8
    series[40:48] = [1.4 - 0.3 * i for i in range(8)]
    series[48] = 0.6
    assert spans(series, "N3") == [(10, 15, "rising"), (40, 47, "falling")]


def test_n4_14_alternating_and_13_do_not():
    series = planted(60, 10, [0.5, -0.5] * 7, i9=0.5, i24=-0.5)
    series[30:43] = [0.4, -0.4] * 6 + [0.4]
    series[29], series[43] = 0.4, 0.4
    assert spans(series, "N4") == [(10, 23, None)]


def test_n7_15_within_1_sigma_and_14_do_not():
    series = planted(60, 10, [0.5, -0.5, 0.2] * 5, i9=1.5, i25=-1.5)
    series[30:44] = 0.2
    series[29] = series[44] = 1.5
    assert spans(series, "N7") == [(10, 24, None)]


def test_n8_8_beyond_1_sigma_on_both_sides_not_all_on_one():
    series = planted(60, 10, [1.5, -1.5, 1.2, -1.2, 1.5, -1.5, 1.1, -1.1], i9=0.2, i18=0.2)
    series[30:38] = 1.5
    series[29] = series[38] = 0.2
    assert spans(series, "N8") == [(10, 17, None)]


def test_a_planted_drift_is_caught_by_several_rules_and_nothing_breaks_before_it():
    drift = [0.6 + 0.5 * step for step in range(10)]         # rising from 0.6 to 5.1 sigma
    series = np.concatenate([quiet(40), drift])
    breaks = find_rule_breaks(series, UNIT, rules=ALL_RULES)
    assert {b.rule for b in breaks} >= {"N1", "N2", "N3", "N5", "N6", "WE1", "WE2", "WE3", "WE4"}
    assert min(b.first for b in breaks) >= 38                  # 38, 39 are quiet points on the high side
    n3 = [b for b in breaks if b.rule == "N3"]
    assert [(b.first, b.last, b.direction) for b in n3] == [(39, 49, "rising")]
    n1 = [b for b in breaks if b.rule == "N1"]
    assert [(b.first, b.last) for b in n1] == [(45, 49)]       # 0.6 + 0.5 * 5 = 3.1 > 3


def test_a_break_keeps_its_first_index_as_frames_arrive():
    """What the alarm monitor keys on: a break grows at its end, its start never moves."""
    series = np.concatenate([quiet(40), [0.6 + 0.5 * step for step in range(10)], quiet(10)])
    final = {(b.rule, b.direction, b.first): b.last for b in find_rule_breaks(series, UNIT, rules=ALL_RULES)}
    for length in range(1, series.size + 1):
        for found in find_rule_breaks(series[:length], UNIT, rules=ALL_RULES):
            key = (found.rule, found.direction, found.first)
            assert key in final and final[key] >= found.last


def test_unknown_rules_are_refused():
    with pytest.raises(ValueError, match="unknown rule 'N9'"):
        find_rule_breaks([0.0, 1.0], UNIT, rules=("N9",))


def test_sample_means_are_the_fieldstats_mean_and_95_ci_per_part_in_first_seen_order():
    parts = ["P2", "P2", "P2", "P1", None, "P1", "P3"]
    values = [1.0, 2.0, 3.0, 5.0, 100.0, 7.0, 4.0]
    samples = sample_means(parts, values)
    assert [(s.part_id, s.indices, s.n) for s in samples] == [("P2", (0, 1, 2), 3), ("P1", (3, 5), 2),
                                                              ("P3", (6,), 1)]
    p2 = samples[0]
    assert p2.mean == 2.0 and p2.sd == pytest.approx(1.0)
    assert p2.ci95_high - p2.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) sd / sqrt(n)
    reference = summarize_fields([{"v": 5.0}, {"v": 7.0}], names=("v",))["v"]
    assert (samples[1].ci95_low, samples[1].ci95_high) == (reference.ci95_low, reference.ci95_high)
    assert (samples[2].mean, samples[2].ci95_low, samples[2].sd) == (4.0, None, None)
    assert samples[0].to_dict()["indices"] == [0, 1, 2]
