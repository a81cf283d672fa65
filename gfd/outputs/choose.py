"""Which output the config asks for: stdout, the NodeFeature API, or the feature file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gfd.config import Config
from gfd.config.model import STDOUT
from gfd.outputs import Output

if TYPE_CHECKING:
    from gfd.metrics import Metrics


def make_output(config: Config, metrics: Metrics | None = None,
                on_deleted: Callable[[], None] | None = None) -> Output:
    """`on_deleted`: called when someone deletes what was written (the NodeFeature object), so that a
    daemon writes it again at once."""
    from gfd.outputs.featurefile import FeatureFile
    from gfd.outputs.stdout import Stdout

    if config.output_file in (STDOUT, ""):
        return Stdout()
    if config.writes_node_feature:
        from gfd.outputs.nodefeature import NodeFeatureOutput

        return NodeFeatureOutput.from_config(config, metrics, on_deleted)
    return FeatureFile(config.output_file)
