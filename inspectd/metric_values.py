"""What counts as a metric value: one rule for the wire, the PLC maps, reports and verdicts.

A value is a number when it is a number type (int, float, numpy's numbers, anything else
`float()` reads that is not text) and finite. Not numbers, and so None (JSON null, a
register's "no value" sentinel, a rule's missing metric):
- None;
- a bool, Python's or numpy's: `True` is a flag, not 1.0 (Python would say `float(True) == 1.0`);
- text, even text that spells a number (`"7"`): a metric is measured, never typed in, and
  a verdict rule must not be passed by a word;
- NaN and the infinities (strict JSON has neither; a controller should not see them);
- anything else `float()` refuses (a dict, a list).

The verdict message, the Modbus register map, the OPC UA variables, `inspectd analyze`'s
files, the workbooks, the field statistics and the verdict rules all call
`finite_or_none`, so a metric is a number or null in the same cases everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite_or_none(value: Any) -> float | None:
    """The value as a finite float, or None when it is not a number (see the module docstring).

    Example:
        >>> finite_or_none(3), finite_or_none(2.5), finite_or_none(float("nan"))
        (3.0, 2.5, None)
        >>> finite_or_none(True), finite_or_none(None), finite_or_none(float("-inf")), finite_or_none("7")
        (None, None, None, None)
    """
    if value is None or isinstance(value, (bool, np.bool_, str, bytes, bytearray)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def is_finite_number(value: Any) -> bool:
    """Whether `finite_or_none` reads a number from `value`.

    Example:
        >>> is_finite_number(0.5), is_finite_number(True), is_finite_number(float("inf"))
        (True, False, False)
    """
    return finite_or_none(value) is not None


__all__ = ["finite_or_none", "is_finite_number"]
