"""plugin/kubelet.py: registration with the kubelet (the stand-in), retries and re-registration."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from gfd.lifecycle import Scope
from plugin.config import PluginConfig
from plugin.health import HealthState
from plugin.host import NodeDevices
from plugin.kubelet import KubeletRegistrar
from plugin.metrics import PluginMetrics
from plugin.resources import build_resources
from plugin.server import DevicePluginService, ResourceServer
from tests.builders import gpu, mig, model
from tests.helpers import eventually
from tests.kubelet import KubeletStandIn


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dp-", dir="/tmp") as directory:  # unix socket paths are short
        yield Path(directory) / "device-plugins"


@pytest.fixture
def scope() -> Iterator[Scope]:
    """The run's scope the servers' pools belong to: closed (every worker joined) after the test."""
    with Scope("run") as run:
        yield run
    assert not run.hung


def registrar(plugin_dir: Path, metrics: PluginMetrics, scope: Scope,
              kubelet_socket: str | None = None) -> KubeletRegistrar:
    config = PluginConfig(mig_strategy="mixed")
    resources = build_resources(model(gpu(0, mig(0, "1g.5gb", 1)), gpu(1)), config)
    servers = [ResourceServer(DevicePluginService(r, config, NodeDevices(), HealthState(300), (), metrics,
                                                  scope.stopping), str(plugin_dir), scope) for r in resources]
    socket = str(plugin_dir / "kubelet.sock") if kubelet_socket is None else kubelet_socket
    return KubeletRegistrar(servers, socket, metrics, poll_s=0.02)


def registrations(metrics: PluginMetrics, resource: str, *reasons: str) -> float:
    """Registrations counted for `resource` with any of `reasons`."""
    return sum(metrics.registry.get_sample_value("nvidia_device_plugin_registrations_total",
                                                 {"resource": resource, "reason": reason}) or 0.0
               for reason in reasons)


def test_every_resource_registers_and_registers_again_after_a_kubelet_restart(plugin_dir: Path, scope: Scope) -> None:
    plugin_dir.mkdir()
    kubelet = KubeletStandIn(str(plugin_dir))
    metrics = PluginMetrics()
    r = registrar(plugin_dir, metrics, scope)
    stop = threading.Event()
    watch = threading.Thread(target=r.run, args=(stop,))
    try:
        r.start()
        for name in ("nvidia.com/mig-1g.5gb", "nvidia.com/gpu"):
            assert kubelet.registered(name).request.endpoint == name.replace("nvidia.com/", "nvidia-") + ".sock"
            assert registrations(metrics, name, "start") == 1
        watch.start()
        kubelet.restart()  # every plugin socket deleted, a new kubelet.sock
        kubelet.registered("nvidia.com/gpu")
        kubelet.registered("nvidia.com/mig-1g.5gb")
        # The poll may see our sockets deleted before the new kubelet.sock appears: either reason.
        assert registrations(metrics, "nvidia.com/gpu", "kubelet restart", "retry") == 1
        assert all(os.path.exists(s.path) for s in r.servers)  # served again
    finally:
        stop.set()
        if watch.is_alive():
            watch.join(5)
        r.stop()
        kubelet.stop()


def test_a_kubelet_that_comes_later_is_registered_with_once_its_socket_appears(plugin_dir: Path, scope: Scope) -> None:
    metrics = PluginMetrics()
    r = registrar(plugin_dir, metrics, scope)
    r.start()  # no kubelet.sock yet: the attempt fails and is retried with backoff
    try:
        assert r.pending == {0, 1}
        kubelet = KubeletStandIn(str(plugin_dir))
        try:
            def registered() -> bool:
                r.check()  # one poll of the watch loop
                return not r.pending

            eventually(registered, timeout=10)
            # A kubelet.sock appearing is a kubelet (re)start: registration follows at once, not at the retry.
            assert registrations(metrics, "nvidia.com/gpu", "kubelet restart") == 1
        finally:
            kubelet.stop()
    finally:
        r.stop()


def test_no_kubelet_socket_serves_without_registering(plugin_dir: Path, scope: Scope) -> None:
    metrics = PluginMetrics()
    r = registrar(plugin_dir, metrics, scope, kubelet_socket="")
    r.start()
    try:
        assert not r.pending
        assert all(os.path.exists(s.path) for s in r.servers)
        assert registrations(metrics, "nvidia.com/gpu", "start") == 0
    finally:
        r.stop()


def test_each_resource_says_when_it_registers_and_when_it_stops_being_registered(plugin_dir: Path,
                                                                                 scope: Scope) -> None:
    """While the kubelet is away: one compact line per attempt for all the resources waiting, with the backoff,
    the socket named once. Then one line per resource as each registers, loses its registration (a kubelet
    restart) and stops being registered (the plugin stops)."""
    metrics = PluginMetrics()
    r = registrar(plugin_dir, metrics, scope)
    names = [s.service.resource.name for s in r.servers]
    kubelet = None

    def poll_until(done: Callable[[], bool]) -> None:
        def step() -> bool:
            r.check()  # one poll of the watch loop
            return done()
        eventually(step, timeout=10)

    with structlog.testing.capture_logs() as logged:
        try:
            r.start()  # no kubelet.sock yet
            poll_until(lambda: r.backoff.failures >= 2)
            kubelet = KubeletStandIn(str(plugin_dir))
            poll_until(lambda: not r.pending)
            failed = [e for e in logged if e["event"] == "registration with the kubelet failed; will retry"]
            assert [e["attempt"] for e in failed] == list(range(1, len(failed) + 1))
            assert failed[0]["kubelet"] == r.kubelet_socket and all("kubelet" not in e for e in failed[1:])
            for event in failed:
                assert event["error"] == "UNAVAILABLE: No such file or directory"
                assert event["pending"] == 2 and 0 < event["retry_in_s"] <= 10
                assert str(plugin_dir) not in repr({k: v for k, v in event.items() if k != "kubelet"})
            assert _resources(logged, "registered with the kubelet") == names

            kubelet.restart()
            poll_until(lambda: not r.pending and len(_resources(logged, "registered with the kubelet")) == 4)
            lost = [e for e in logged if e["event"] == "registration lost; serving and registering again"]
            assert sorted(e["resource"] for e in lost) == sorted(names)
            assert {e["reason"] for e in lost} <= {"kubelet restarted", "socket removed"}
        finally:
            r.stop()
            if kubelet is not None:
                kubelet.stop()
    assert _resources(logged, "stopped serving; no longer registered") == names
    r.stop()  # stopping again says nothing more: nothing is registered
    assert len(_resources(logged, "stopped serving; no longer registered")) == 2


def _resources(logged: Sequence[MutableMapping[str, Any]], event: str) -> list[str]:
    return [e["resource"] for e in logged if e["event"] == event]
