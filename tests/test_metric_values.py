"""One rule for what a metric value is: the message, the PLC maps, reports and verdicts agree."""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from inspectd.analysis import fieldstats
from inspectd.analysis.verdict import decide
from inspectd.bridges import opcua
from inspectd.bridges.registermap import NumberType, encode_number
from inspectd.config import Rule
from inspectd.metric_values import finite_or_none, is_finite_number
from inspectd.wire import message

NOT_NUMBERS = [None, True, False, np.bool_(True), math.nan, math.inf, -math.inf, np.float32("nan"),
               "7", "2.5", b"1", {}, [1.0], object()]
NUMBERS = [(3, 3.0), (2.5, 2.5), (-0.0, 0.0), (np.float32(1.5), 1.5), (np.int64(7), 7.0), (np.uint16(9), 9.0),
           (Fraction(1, 4), 0.25), (np.array(0.75), 0.75)]


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_not_numbers_are_none(value) -> None:
    assert finite_or_none(value) is None
    assert not is_finite_number(value)


@pytest.mark.parametrize(("value", "expected"), NUMBERS, ids=repr)
def test_numbers_are_floats(value, expected: float) -> None:
    number = finite_or_none(value)
    assert type(number) is float and number == expected
    assert is_finite_number(value)


def test_an_integer_too_large_for_a_float_is_no_number() -> None:
    assert finite_or_none(10**400) is None


def _message_value(value) -> object:
    draft = message.build_verdict_message(
        station="s1", verdict="PASS", source="a.png", source_kind="file", part_id=None, capture_time=None,
        metrics={"porosity_pct": value}, engine_name="classical", backend="cpu", model_hash=None,
        timings_ms={}, image_sha256=None, width=None, height=None, bit_depth=None)
    return draft["parameters"]["porosity_pct"]["value"]


def _opcua_value(value, type_name: str) -> object:
    bus = object.__new__(opcua.OpcUaServerBus)
    bus._types = {"porosity_pct": SimpleNamespace(name=type_name)}
    return bus._convert("porosity_pct", value)


@pytest.mark.parametrize("value", [True, False, None, math.nan, "7", 1.5, np.float32(2.0), 4], ids=repr)
def test_every_reader_agrees_with_finite_or_none(value) -> None:
    expected = finite_or_none(value)
    assert _message_value(value) == expected
    double = _opcua_value(value, "Double")
    assert (math.isnan(double) if expected is None else double == expected)
    registers = encode_number(value, NumberType.FLOAT32)
    assert registers == encode_number(math.nan if expected is None else expected, NumberType.FLOAT32)
    assert encode_number(value, NumberType.INT16) == encode_number(expected, NumberType.INT16)
    failed = decide({"porosity_pct": value}, [Rule(metric="porosity_pct", op="<=", limit=100.0)]).failed_rules
    assert (failed[0].value is None) if expected is None else not failed
    stats = fieldstats.summarize_fields([{"porosity_pct": value}, {"porosity_pct": 1.0}], ["porosity_pct"])
    assert stats["porosity_pct"].n == (1 if expected is None else 2)


def test_opcua_writes_no_value_for_a_bool_on_number_nodes() -> None:
    """A bool on a Double node is NaN and on an integer node the type's sentinel, as the message gives null."""
    assert math.isnan(_opcua_value(True, "Double"))
    assert _opcua_value(True, "UInt16") == 65535
    assert _opcua_value(True, "Int16") == -32768
    assert _opcua_value(True, "Boolean") is True  # a Boolean node still takes the flag
