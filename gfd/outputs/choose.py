"""Which output the config asks for: stdout, the NodeFeature API, or the feature file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gfd.config import Config
from gfd.config.model import STDOUT
from gfd.outputs import Output

if TYPE_CHECKING:
    from gfd.metrics import Metrics


def make_output(config: Config, metrics: Metrics | None = None) -> Output:
    from gfd.outputs.featurefile import FeatureFile
    from gfd.outputs.stdout import Stdout

    if config.output_file in (STDOUT, ""):
        return Stdout()
    if config.writes_node_feature:
        from gfd.outputs.nodefeature import NodeFeatureOutput

        return NodeFeatureOutput.from_config(config, metrics)
    return FeatureFile(config.output_file)
