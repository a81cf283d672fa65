import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfd.config.duration import INFINITE_NS, format_duration, parse_duration


@pytest.mark.parametrize(("text", "ns"), [
    ("60s", 60 * 10**9), ("1m0s", 60 * 10**9), ("1m30s", 90 * 10**9), ("500ms", 5 * 10**8),
    ("1.5h", 5400 * 10**9), ("0", 0), ("0s", 0), ("-1s", -(10**9)), ("5ns", 5), ("2us", 2000),
    ("2µs", 2000), ("1h2m3s4ms", 3723004000000), ("infinite", INFINITE_NS), (".5s", 5 * 10**8),
])
def test_parse_go_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(("text", "message"), [
    ("60", 'time: missing unit in duration "60"'),
    ("", 'time: invalid duration ""'),
    ("1x", 'time: invalid duration "1x"'),
    ("s", 'time: invalid duration "s"'),
    ("1.s5", 'time: missing unit in duration "1.s5"'),
    ("--1s", 'time: invalid duration "--1s"'),
])
def test_bad_durations_are_rejected_with_go_wording(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(") + "$"):
        parse_duration(text)


@pytest.mark.parametrize(("ns", "text"), [
    (60 * 10**9, "1m0s"), (5, "5ns"), (1500 * 10**6, "1.5s"), (3600 * 10**9, "1h0m0s"), (0, "0s"),
    (INFINITE_NS, "infinite"), (2500, "2.5µs"), (-(10**9), "-1s"),
])
def test_format_like_go(ns: int, text: str) -> None:
    assert format_duration(ns) == text


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_format_then_parse_round_trips(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


@given(st.text(max_size=20))
def test_parser_never_fails_with_anything_but_value_error(text: str) -> None:
    try:
        parse_duration(text)
    except ValueError as e:
        assert str(e).startswith("time: ")
