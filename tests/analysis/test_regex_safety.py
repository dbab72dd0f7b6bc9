"""Regular expressions from settings: the runaway-backtracking check, without a clock."""

from __future__ import annotations

import pytest

from inspectd.regex_safety import backtracking_problem, check_regex


@pytest.mark.parametrize("pattern", [
    "(a+)+", "(a+)+b", "^(a+)+$", "(a|a)*", "(a*)*", "(x*)*y", "(a|aa)+", "(a?)+b", "(-?\\d+)+$",
    "(\\w+\\s?)+$", "(?:a+){2,40}", "(?:a|b|ab)*c", "(?=(a+)+b)", "(.+)*x", "([a-z]*[a-z])+!",
])
def test_exponential_patterns_are_refused(pattern: str) -> None:
    assert "exponential" in backtracking_problem(pattern)


@pytest.mark.parametrize("pattern", [
    ".*_.*_.*",  # searched from every position: four loops over "_____..."
    "^.*_.*_.*_.*",
    "^a*a*a*a*x",
    "^(\\w*)(\\w*)(\\w*)(\\w*)!",
    "(.*a){12}",
    "(?:ab)*(?:ab)*(?:ab)*(?:ab)*",
])
def test_high_degree_polynomial_patterns_are_refused(pattern: str) -> None:
    assert "very long" in backtracking_problem(pattern)


@pytest.mark.parametrize("pattern", [
    "^(?P<part>[A-Z]+-\\d+)_", "(?P<part>[A-Z]-\\d+)_", "^(?P<part>.*)_field\\d+\\.png$", "(?P<part>.*)_",
    "([A-Z]+-)+\\d", ".*_.*", "^.*_.*_.*", "(\\w|\\d)+", "(ab|ac)+", "(a|b)*c", "\\d{4}-\\d{2}", "(a|a){3}",
    "(a|ab)*c", "(?i)(a|A)+", "^(?P<part>[^_]+)_(?P<field>\\d+)", "(?P<part>x)(?P=part)",
])
def test_ordinary_patterns_pass(pattern: str) -> None:
    assert backtracking_problem(pattern) is None


def test_check_regex_compiles_and_asks_for_groups() -> None:
    assert check_regex("^(?P<part>\\w+)_", required_groups=("part",)).groupindex == {"part": 1}
    with pytest.raises(ValueError, match="named group"):
        check_regex("^(\\w+)_", required_groups=("part",))
    with pytest.raises(ValueError, match="not a valid regular expression"):
        check_regex("(unclosed")
    with pytest.raises(ValueError, match="too long"):
        check_regex("a" * 300)


def test_a_pattern_too_large_to_analyse_is_refused_not_analysed_for_long() -> None:
    assert "too complex" in backtracking_problem("(?:[a-z]{16}){16}")


@pytest.mark.parametrize("pattern", ["a?" * 24 + "a" * 24, "(?:.?)" * 30, ".{0,16}" * 6])
def test_many_optional_parts_in_a_row_are_refused(pattern: str) -> None:
    """No loop at all, yet a?{n}a{n} has 2**n ways to match: Python's re tries each before failing."""
    assert "ways to match one name" in backtracking_problem(pattern)
