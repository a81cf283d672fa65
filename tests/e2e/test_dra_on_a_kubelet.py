"""The DRA driver's kubelet side registered with a real kubelet (v1.36.2): the kubelet's plugin watcher finds
the registration socket in its plugins_registry directory, asks GetInfo, dials the DRA socket the answer
names, and tells the plugin it is registered; a stopped plugin's sockets are gone."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from plugin.dra.checkpoint import Checkpoint
from plugin.dra.claims import ClaimRef, ResourceClaim
from plugin.dra.config import DRIVER_NAME
from plugin.dra.devices import Allocatable
from plugin.dra.prepare import Preparer
from plugin.dra.server import DraPluginServer, HealthBoard
from tests.e2e.conftest import NODE, Cluster
from tests.helpers import eventually


class NoClaims:
    """Registration needs no claims; a prepare here would be a kubelet bug, so it fails loudly."""

    def read(self, ref: ClaimRef) -> ResourceClaim:
        raise LookupError(f"no claims in this test ({ref})")


class NoSpecs:
    def write(self, claim_uid: str, devices: Sequence[Allocatable]) -> None:
        raise OSError("no specs in this test")

    def remove(self, claim_uid: str) -> None:
        pass


@pytest.fixture(scope="module")
def dra_server(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DraPluginServer]:
    registry, plugins = cluster.node_env["DRA_REGISTRY_DIR"], cluster.node_env["DRA_PLUGINS_DIR"]
    plugin_dir = os.path.join(plugins, DRIVER_NAME)
    checkpoint = Checkpoint(str(tmp_path_factory.mktemp("dra")), "boot")
    preparer = Preparer(NODE, checkpoint, NoClaims(), NoSpecs(), {})
    server = DraPluginServer(os.path.join(registry, f"{DRIVER_NAME}-reg.sock"), os.path.join(plugin_dir, "dra.sock"),
                             preparer, HealthBoard())
    server.start()
    yield server
    server.stop()


def test_the_kubelet_registers_the_driver(cluster: Cluster, dra_server: DraPluginServer) -> None:
    eventually(dra_server.registration.registered.is_set, timeout=30)
    assert dra_server.registration.error == ""
    log = (cluster.dir / "node" / "kubelet.log").read_text(errors="replace")
    assert DRIVER_NAME in log


def test_a_stopped_driver_leaves_no_sockets(dra_server: DraPluginServer) -> None:
    dra_server.stop()
    assert not Path(dra_server.registration_socket).exists() and not Path(dra_server.dra_socket).exists()
