"""gfd/outputs/choose.py: which output the config asks for, and whether a clean stop takes it back."""

from __future__ import annotations

import pytest

from gfd.config import Config, load_config, parse_command_line
from gfd.outputs.choose import make_output, removed_on_stop, writes_node_feature
from gfd.outputs.featurefile import FeatureFile
from gfd.outputs.stdout import Stdout


def load(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Config:
    return load_config(parse_command_line(argv or [], env or {}))


def test_output_choice_honours_an_explicit_file_and_stdout() -> None:
    assert writes_node_feature(load()) is True
    assert writes_node_feature(load(["-o", "-"])) is False
    assert writes_node_feature(load(["-o", "/x"])) is False
    assert writes_node_feature(load(["-o", "/x", "--use-node-feature-api"])) is True
    assert writes_node_feature(load([], {"USE_NODE_FEATURE_API": "false"})) is False


def test_the_output_made_is_the_one_chosen(tmp_path: object) -> None:
    assert isinstance(make_output(load(["-o", "-"])), Stdout)
    assert isinstance(make_output(load(["-o", f"{tmp_path}/gfd"])), FeatureFile)


@pytest.mark.parametrize(("argv", "removed"), [
    ([], True),
    (["--keep-output-on-exit"], False),
    (["--oneshot"], False),
    (["--sleep-interval=infinite"], False),
    (["--sleep-interval=5s"], True),
])
def test_a_clean_stop_removes_the_labels_unless_they_were_meant_to_stay(argv: list[str], removed: bool) -> None:
    assert removed_on_stop(load(argv)) is removed
