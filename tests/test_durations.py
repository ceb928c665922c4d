"""Go duration strings, as Wippy's YAML and `time` module use them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moonwire.lua import HOUR, MILLISECOND, MINUTE, SECOND, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("1s", SECOND),
        ("1h30m", HOUR + 30 * MINUTE),
        ("250ms", 250 * MILLISECOND),
        ("1.5s", 1_500_000_000),
        ("-2m", -2 * MINUTE),
        ("300us", 300_000),
        ("300µs", 300_000),
        ("7ns", 7),
        (".5h", 30 * MINUTE),
    ],
)
def test_parse(text: str, nanoseconds: int) -> None:
    assert parse_duration(text) == nanoseconds


@pytest.mark.parametrize("text", ["", "5", "1d", "s", "1.s.", "1h 30m", "abc"])
def test_invalid_is_an_error_quoting_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [(0, "0s"), (SECOND, "1s"), (90 * SECOND, "1m30s"), (HOUR, "1h0m0s"), (250 * MILLISECOND, "250ms"), (1_500, "1.5µs")],
)
def test_format_like_go(nanoseconds: int, text: str) -> None:
    assert format_duration(nanoseconds) == text


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_then_parse_round_trips(nanoseconds: int) -> None:
    assert parse_duration(format_duration(nanoseconds)) == nanoseconds
