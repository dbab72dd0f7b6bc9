"""summarize_fields(): mean, sample sd, Student-t 95 % CI (ASTM E2109 style), edge cases."""

from __future__ import annotations

import json
import math

import pytest

from inspectd.analysis.fieldstats import FRACTION_METRICS, FieldStat, summarize_fields


def test_five_fields_against_hand_computed_values():
    values = [2.0, 4.0, 4.0, 5.0, 5.0]  # mean 4, sum of squares 6, sd sqrt(6/4)
    stats = summarize_fields([{"porosity_pct": v} for v in values], names=("porosity_pct",))
    stat = stats["porosity_pct"]
    sd = math.sqrt(6.0 / 4.0)
    half_width = 2.7764451 * sd / math.sqrt(5)  # t(0.975, df=4) = 2.776
    assert stat.n == 5
    assert stat.mean == pytest.approx(4.0)
    assert stat.sd == pytest.approx(sd)
    assert stat.ci95_half_width == pytest.approx(half_width, rel=1e-6)
    assert stat.ci95_low == pytest.approx(4.0 - half_width, rel=1e-6)
    assert stat.ci95_high == pytest.approx(4.0 + half_width, rel=1e-6)
    assert stat.relative_accuracy_pct == pytest.approx(100 * half_width / 4.0, rel=1e-6)


def test_two_fields_use_t_with_one_degree_of_freedom():
    stat = summarize_fields([{"porosity_pct": 1.0}, {"porosity_pct": 3.0}], names=("porosity_pct",))["porosity_pct"]
    assert stat.sd == pytest.approx(math.sqrt(2.0))
    assert stat.ci95_half_width == pytest.approx(12.7062047 * math.sqrt(2.0) / math.sqrt(2.0), rel=1e-6)


def test_default_names_are_the_three_fractions():
    fields = [
        {"melted_fraction_pct": 80.0, "unmelted_fraction_pct": 15.0, "porosity_pct": 5.0, "pore_count": 3.0},
        {"melted_fraction_pct": 78.0, "unmelted_fraction_pct": 16.0, "porosity_pct": 6.0, "pore_count": 4.0},
    ]
    stats = summarize_fields(fields)
    assert tuple(stats) == FRACTION_METRICS
    assert stats["melted_fraction_pct"].mean == pytest.approx(79.0)
    assert stats["unmelted_fraction_pct"].mean == pytest.approx(15.5)


def test_single_field_has_zero_sd_and_no_confidence_interval():
    stat = summarize_fields([{"porosity_pct": 3.5}], names=("porosity_pct",))["porosity_pct"]
    assert stat == FieldStat("porosity_pct", 1, 3.5, 0.0, None, None, None, None)


def test_missing_and_non_finite_values_are_left_out():
    fields = [{"porosity_pct": 2.0}, {"porosity_pct": float("nan")}, {}, {"porosity_pct": 4.0}]
    stat = summarize_fields(fields, names=("porosity_pct", "pore_count"))
    assert stat["porosity_pct"].n == 2
    assert stat["porosity_pct"].mean == pytest.approx(3.0)
    assert stat["pore_count"] == FieldStat("pore_count", 0, None, None, None, None, None, None)


def test_zero_mean_has_no_relative_accuracy_and_results_are_json_friendly():
    stats = summarize_fields([{"porosity_pct": 0.0}] * 3, names=("porosity_pct",))
    stat = stats["porosity_pct"]
    assert stat.sd == 0.0
    assert stat.ci95_half_width == 0.0
    assert stat.relative_accuracy_pct is None
    json.dumps({k: v.to_dict() for k, v in stats.items()}, allow_nan=False)


def test_no_fields_is_an_error():
    with pytest.raises(ValueError):
        summarize_fields([])
