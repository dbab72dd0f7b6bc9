"""decide() / error_verdict(): every operator, boundaries, missing and non-finite metrics."""

from __future__ import annotations

import math

import pytest

from inspectd.analysis.verdict import decide, error_verdict
from inspectd.config import Rule
from inspectd.types import FailedRule, Measurements, VerdictResult


def _rule(op: str, limit: float, metric: str = "porosity_pct") -> Rule:
    return Rule(metric=metric, op=op, limit=limit)


@pytest.mark.parametrize(
    ("op", "value", "limit", "passes"),
    [
        ("<", 4.9, 5.0, True),
        ("<", 5.0, 5.0, False),
        ("<", 5.1, 5.0, False),
        ("<=", 5.0, 5.0, True),
        ("<=", 5.0000001, 5.0, False),
        (">", 5.1, 5.0, True),
        (">", 5.0, 5.0, False),
        (">=", 5.0, 5.0, True),
        (">=", 4.9999999, 5.0, False),
        ("<=", -1.0, 0.0, True),
    ],
)
def test_operators_and_boundaries(op, value, limit, passes):
    verdict = decide(Measurements(metrics={"porosity_pct": value}), [_rule(op, limit)])
    if passes:
        assert verdict.result is VerdictResult.PASS
        assert verdict.failed_rules == ()
    else:
        assert verdict.result is VerdictResult.FAIL
        assert verdict.failed_rules == (FailedRule(metric="porosity_pct", op=op, limit=limit, value=value),)


def test_all_failing_rules_are_listed_in_rule_order():
    rules = [
        _rule("<=", 5.0),
        _rule("<=", 25.0, "unmelted_fraction_pct"),
        _rule(">=", 1.0, "pore_count"),
    ]
    metrics = {"porosity_pct": 9.0, "unmelted_fraction_pct": 10.0, "pore_count": 0.0}
    verdict = decide(Measurements(metrics=metrics), rules)
    assert verdict.result is VerdictResult.FAIL
    assert [f.metric for f in verdict.failed_rules] == ["porosity_pct", "pore_count"]
    assert verdict.failed_rules[1] == FailedRule("pore_count", ">=", 1.0, 0.0)


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf, "7", True])
def test_missing_or_non_finite_metric_fails_with_value_none(value):
    metrics = {} if value is None else {"porosity_pct": value}
    verdict = decide(metrics, [_rule("<=", 5.0)])
    assert verdict.result is VerdictResult.FAIL
    assert verdict.failed_rules == (FailedRule("porosity_pct", "<=", 5.0, None),)


def test_no_rules_is_pass_and_plain_mapping_is_accepted():
    assert decide({"porosity_pct": 99.0}, []).result is VerdictResult.PASS
    assert decide({"porosity_pct": 1.0}, [_rule("<", 2.0)]).result is VerdictResult.PASS


def test_error_verdict_is_never_pass():
    verdict = error_verdict("sample.png: truncated PNG")
    assert verdict.result is VerdictResult.ERROR
    assert verdict.reason == "sample.png: truncated PNG"
    assert verdict.failed_rules == ()
    assert error_verdict("").result is VerdictResult.ERROR
    assert error_verdict("   ").reason
