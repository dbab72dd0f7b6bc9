"""Rules -> verdict: PASS only when every configured rule holds.

Pure functions, no I/O: the daemon calls `decide` once per frame and `error_verdict` when a
frame could not be analysed, so an unreadable image can never turn into a PASS.

Example:
    >>> from inspectd.config import Rule
    >>> from inspectd.types import Measurements
    >>> rules = [Rule(metric="porosity_pct", op="<=", limit=5.0)]
    >>> decide(Measurements(metrics={"porosity_pct": 7.5}), rules).failed_rules[0].value
    7.5
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Mapping

from inspectd.config import Rule
from inspectd.metric_values import finite_or_none
from inspectd.types import FailedRule, Measurements, Verdict, VerdictResult

logger = logging.getLogger(__name__)

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def decide(measurements: Measurements | Mapping[str, float], rules: Iterable[Rule]) -> Verdict:
    """PASS when every rule holds, else FAIL listing each failing rule with its measured value.

    A metric that is missing, not a real number (a string, a bool), NaN or infinite fails its rule with `value=None`:
    a rule that cannot be checked must not let a part through. No rules at all is a PASS.

    Example:
        >>> from inspectd.config import Rule
        >>> decide({"porosity_pct": 2.0}, [Rule(metric="porosity_pct", op="<", limit=2.0)]).result.value
        'FAIL'
        >>> decide({"porosity_pct": 2.0}, [Rule(metric="porosity_pct", op="<=", limit=2.0)]).result.value
        'PASS'
    """
    metrics = measurements.metrics if isinstance(measurements, Measurements) else measurements
    failed: list[FailedRule] = []
    for rule in rules:
        op = rule.op.value if hasattr(rule.op, "value") else str(rule.op)
        compare = _COMPARE.get(op)
        if compare is None:
            msg = f"unknown rule operator {op!r}; expected one of {sorted(_COMPARE)}"
            raise ValueError(msg)
        value = finite_or_none(metrics.get(rule.metric))
        if value is None or not compare(value, rule.limit):
            failed.append(FailedRule(metric=rule.metric, op=op, limit=float(rule.limit), value=value))
    if failed:
        return Verdict(result=VerdictResult.FAIL, failed_rules=tuple(failed))
    return Verdict(result=VerdictResult.PASS)


def error_verdict(reason: str) -> Verdict:
    """The verdict for a frame that could not be analysed: always ERROR, never PASS.

    Example:
        >>> error_verdict("photo.png: truncated PNG").result.value
        'ERROR'
    """
    text = str(reason).strip() or "analysis failed (no reason given)"
    return Verdict(result=VerdictResult.ERROR, reason=text)
