"""Which output the config asks for: stdout, the NodeFeature API, or the feature file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gfd.config import Config
from gfd.config.duration import INFINITE_NS
from gfd.config.model import STDOUT
from gfd.outputs import Output, OutputError
from gfd.outputs.featurefile import FeatureFile
from gfd.outputs.stdout import Stdout

if TYPE_CHECKING:
    from gfd.lifecycle import Scope
    from gfd.metrics import Metrics


# What the default output needs, and how to write the labels without a cluster: the hint after a failure.
NODE_FEATURE_NEEDS = ("the NodeFeature API, the default output, needs in-cluster credentials or --kubeconfig and "
                      "--node-name or NODE_NAME; -o FILE, -o - (stdout) or --use-node-feature-api=false write the "
                      "labels without a cluster")


def writes_node_feature(config: Config) -> bool:
    """NodeFeature API output, as upstream's default, unless the user clearly asked for a file.

    Upstream ignores `--output-file` while the API is on (its default); we honour an explicit output file
    when `--use-node-feature-api` itself was not set, and `-` always means stdout.
    """
    if config.output_file in (STDOUT, ""):
        return False
    if "use_node_feature_api" in config.explicit:
        return config.use_node_feature_api
    return config.use_node_feature_api and "output_file" not in config.explicit


def removed_on_stop(config: Config) -> bool:
    """Whether a clean stop takes the labels back (upstream removes the feature file, so NFD drops every
    GPU label), unless asked to keep them or the labels were meant to stay (oneshot, an infinite interval).
    A NodeFeature object or stdout has nothing to remove."""
    return not (config.keep_output_on_exit or config.oneshot or config.sleep_interval_ns == INFINITE_NS)


def make_output(config: Config, scope: Scope | None = None, metrics: Metrics | None = None,
                on_deleted: Callable[[], None] | None = None) -> Output:
    """`scope`: where an output starts what it runs in the background (the NodeFeature deletion watch) and
    is stopped. `on_deleted`: called when someone deletes what was written (the NodeFeature object), so
    that a daemon writes it again at once."""
    if config.output_file in (STDOUT, ""):
        return Stdout()
    if writes_node_feature(config):
        # Imported here: the kubernetes client takes ~220 ms to import (python -X importtime), which a
        # feature-file or stdout run never needs.
        from gfd.outputs.nodefeature import NodeFeatureOutput

        try:
            return NodeFeatureOutput.from_config(config, metrics, on_deleted, scope)
        except OutputError as e:  # upstream's line first (scripts grep it), then the way out
            raise OutputError(f"{e} ({NODE_FEATURE_NEEDS})", e.retry_after) from e
    return FeatureFile(config.output_file)
