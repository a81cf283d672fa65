import pytest

from gfd.discovery.migprofile import MigProfileError, memory_gb, profile_name


@pytest.mark.parametrize(("gi", "ci", "mem", "parent", "name"), [
    (0, 0, 4864, 40960, "1g.5gb"),
    (9, 0, 9856, 40960, "1g.10gb"),
    (2, 2, 19968, 40960, "3g.20gb"),
    (2, 0, 19968, 40960, "1c.3g.20gb"),
    (7, 0, 4864, 40960, "1g.5gb+me"),
    (15, 0, 9984, 81559, "1g.10gb+me.all"),
    (10, 0, 9984, 81559, "1g.10gb+gfx"),
    (13, 0, 9984, 81559, "1g.10gb-me"),
    (0, 0, 9984, 81559, "1g.10gb"),
    (4, 4, 80896, 81920, "7g.80gb"),
])
def test_profile_names_like_go_nvlib(gi: int, ci: int, mem: int, parent: int, name: str) -> None:
    assert profile_name(gi, ci, mem, parent) == name


def test_profile_17_is_rejected_as_upstream() -> None:
    with pytest.raises(MigProfileError, match="invalid GPU Instance Profile index: 17"):
        profile_name(17, 0, 4864, 40960)


def test_memory_fraction_rounds_up_to_eighths() -> None:
    assert memory_gb(4864, 40960) == 5
    assert memory_gb(1, 40960) == 5
