"""Shared fixtures: simulated nodes under the real pynvml, and label-set builders for expectations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gfd.discovery.simulated.install import Simulation, install
from gfd.discovery.simulated.profiles import build_node, load_profile

# The end-to-end tier runs only inside the private namespaces tests/test_e2e.py makes for it.
collect_ignore_glob = [] if os.environ.get("GFD_E2E_INSIDE") else ["e2e/*"]


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    """Every test starts from the same logging set-up: a program a test ran in-process (doctor logs only
    errors) must not hide the next test's warnings from structlog.testing.capture_logs."""
    from gfd import logs

    logs.configure()
    yield


@pytest.fixture
def simulate() -> Iterator[Any]:
    """simulate(name_or_dict) installs a simulated node under pynvml; removed after the test."""
    sims: list[Simulation] = []

    def _install(profile: str | dict[str, Any]) -> Simulation:
        node = load_profile(profile) if isinstance(profile, str) else build_node(profile, "<test>")
        sim = install(node)
        sims.append(sim)
        return sim

    yield _install
    for sim in sims:
        sim.close()


@pytest.fixture
def opened(simulate: Any) -> Iterator[Any]:
    """opened(profile): a simulated node with NVML open, as a daemon holds it: (simulation, GPUs as read)."""
    from gfd.discovery.session import NodeSource

    sources: list[NodeSource] = []

    def _open(profile: str) -> tuple[Simulation, tuple[Any, ...]]:
        sim = simulate(profile)
        source = NodeSource("auto")
        sources.append(source)
        source.host_root = sim.host_root
        source.open()
        return sim, source.read().gpus

    yield _open
    for source in sources:
        source.close()


@pytest.fixture
def write_yaml(tmp_path: Any) -> Any:
    def _write(doc: Any, name: str = "config.yaml") -> str:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        return str(path)

    return _write


@pytest.fixture
def kubelet() -> Iterator[Any]:
    """A kubelet stand-in under a short /tmp path (a unix socket path has at most 107 bytes), for its PodResources
    socket (the telemetry tests; the plugin's tests have one of their own)."""
    import tempfile

    from tests.kubelet import KubeletStandIn

    with tempfile.TemporaryDirectory(prefix="k-", dir="/tmp") as tmp:
        os.makedirs(os.path.join(tmp, "device-plugins"))
        stand_in = KubeletStandIn(os.path.join(tmp, "device-plugins"))
        yield stand_in
        stand_in.stop()


@pytest.fixture
def apiserver() -> Iterator[Any]:
    from tests.apiserver import FakeApiServer

    server = FakeApiServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def dra_api() -> Iterator[Any]:
    """A real kube-apiserver v1.36.2 (../shared/k8s/cluster, no scheduler) with the Node `gpu-node-1`, shared by
    the DRA suites that talk to the API (one start for all of them): (ApiClient, kubeconfig path). Each suite
    keeps to its own namespaces and removes the ResourceSlices it made."""
    import subprocess
    import tempfile

    from kubernetes import client, config

    from tests.requirements import require_commands, require_shared

    cluster = require_shared("k8s", "cluster") / "cluster"
    require_commands("etcd", "openssl", "curl", "xz")
    directory = tempfile.mkdtemp(prefix="k8s-dra-")
    try:
        kubeconfig = subprocess.run([str(cluster), "up", directory], check=True, capture_output=True, text=True,
                                    timeout=120).stdout.strip().splitlines()[-1]
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                client_configuration=configuration)
        with client.ApiClient(configuration) as api_client:
            client.CoreV1Api(api_client).create_node(
                client.V1Node(metadata=client.V1ObjectMeta(name="gpu-node-1", labels={}, annotations={})))
            yield api_client, kubeconfig
    finally:
        subprocess.run([str(cluster), "down", directory], check=False, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def nfd_schemas() -> dict[str, Any]:
    """openAPIV3Schema of the NFD CRDs, read from shared/crds at test time."""
    from tests.requirements import require_shared

    path = require_shared("crds", "nfd-api-crds-v0.19.0.yaml") / "nfd-api-crds-v0.19.0.yaml"
    schemas = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            schemas[doc["spec"]["names"]["kind"]] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schemas


@pytest.fixture
def mps_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The MPS stand-in (tests/mps) on PATH as nvidia-cuda-mps-control; an MpsRoot for its daemons, killed after."""
    from plugin.mps.root import MpsRoot
    from tests.mps import standin

    monkeypatch.setenv("PATH", standin.path_with_stand_in())
    with standin.daemons_root() as d:
        yield MpsRoot(str(d))


@pytest.fixture(scope="session")
def validator() -> Any:
    """The CDI specification's JSON schema (../shared/cdi) as a Draft 7 validator, its defs.json resolved."""
    import json

    import jsonschema
    import referencing
    import referencing.jsonschema

    from tests.requirements import require_shared

    cdi_schema = require_shared("cdi", "schema.json", "defs.json")
    schema = json.loads((cdi_schema / "schema.json").read_text())
    defs = referencing.Resource.from_contents(json.loads((cdi_schema / "defs.json").read_text()),
                                              default_specification=referencing.jsonschema.DRAFT7)
    return jsonschema.Draft7Validator(schema, registry=referencing.Registry().with_resource("defs.json", defs))
