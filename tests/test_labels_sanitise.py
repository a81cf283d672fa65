import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfd.labels.sanitise import product, sanitise


@pytest.mark.parametrize(("raw", "expected"), [
    ("NVIDIA A100-SXM4-40GB", "NVIDIA-A100-SXM4-40GB"),
    ("NVIDIA-TITAN-X-(Pascal)", "NVIDIA-TITAN-X-Pascal"),
    ("some ( thing )else", "some-thing-else"),
    ("Quadro RTX 6000/8000", "Quadro-RTX-60008000"),
    ("A - B", "A---B"),
    ("a\tb", "ab"),
    ("ä-ü", "-"),
    ("Orin (nvgpu)", "Orin-nvgpu"),
    ("   ", ""),
    ("p4d.24xlarge", "p4d.24xlarge"),
    ("HVM domU", "HVM-domU"),
])
def test_sanitise_matches_upstream_table(raw: str, expected: str) -> None:
    assert sanitise(raw) == expected


def test_product_skips_empty_raw_parts_and_keeps_parts_that_sanitise_to_nothing() -> None:
    assert product("NVIDIA A100", "", "MIG", "1g.5gb") == "NVIDIA-A100-MIG-1g.5gb"
    assert product("ü", "MIG") == "-MIG"


@given(st.text())
def test_sanitised_values_only_hold_allowed_characters(raw: str) -> None:
    out = sanitise(raw)
    assert re.fullmatch(r"[A-Za-z0-9\-_.]*", out)
    assert not out.startswith(" ") and "  " not in out


@given(st.text(alphabet=st.characters(codec="ascii")))
def test_sanitise_keeps_every_allowed_character_in_order(raw: str) -> None:
    allowed = re.sub(r"[^A-Za-z0-9\-_.]", "", raw)
    assert sanitise(raw).replace("-", "") == allowed.replace("-", "")


@given(st.text())
def test_sanitise_is_idempotent(raw: str) -> None:
    assert sanitise(sanitise(raw)) == sanitise(raw)
