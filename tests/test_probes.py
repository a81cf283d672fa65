"""The chart's liveness/readiness probes mean what they say: /healthz, with the env the chart renders,
fails while the program is unhealthy and passes once it is healthy."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import helm_python
import yaml

from gfd.backoff import Backoff
from gfd.config import load_config, parse_command_line
from gfd.daemon import Daemon
from gfd.discovery.simulated.profiles import Fault
from plugin.cli import DevicePlugin
from plugin.config import load_plugin_config
from tests.helpers import eventually, free_port, http_get
from tests.kubelet import KubeletStandIn

CHART = Path(__file__).resolve().parent.parent / "helm"


def rendered_env(component: str, container_name: str, port: int) -> dict[str, str]:
    """The plain-value env of a rendered main container, with metrics on at `port`."""
    values = {"gfd": {"enabled": True, "metrics": {"enabled": True, "port": port}},
              "devicePlugin": {"metrics": {"enabled": True, "port": port}}}
    out = helm_python.Chart.load(str(CHART)).render(values, name="nvdp", namespace="nvidia-device-plugin")
    for doc in (d for text in out.values() for d in yaml.safe_load_all(text) if d):
        if doc["kind"] == "DaemonSet" and doc["metadata"]["name"].endswith(component):
            c = next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == container_name)
            probe = c["readinessProbe"]["httpGet"]
            assert (probe["path"], probe["port"]) == ("/healthz", "metrics")
            return {e["name"]: e["value"] for e in c["env"] if "value" in e}
    raise AssertionError(f"no {container_name}")


def healthz(port: int) -> int | None:
    answer = http_get(f"http://127.0.0.1:{port}/healthz")
    return answer[0] if answer else None


def test_gfd_probe_fails_without_a_successful_pass_and_passes_after(tmp_path: Path) -> None:
    port = free_port()
    env = rendered_env("gpu-feature-discovery", "gpu-feature-discovery-ctr", port)
    cmdline = parse_command_line(["--simulate=t4", "--sleep-interval=10ms", "--use-node-feature-api=false",
                                  f"--output-file={tmp_path / 'gfd'}"], env)
    daemon = Daemon(cmdline, load_config(cmdline))
    daemon.health_min_s = 0.2  # the chart's grace is 3 intervals, at least 30 s: shortened for the test
    daemon.nvml_backoff = Backoff(0.01, 0.05, jitter=False)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        eventually(lambda: daemon.current is not None and daemon.current.source.simulation is not None)
        assert daemon.current is not None and daemon.current.source.simulation is not None
        daemon.current.source.simulation.node.faults.append(Fault("nvmlDeviceGetCount_v2", 999))
        eventually(lambda: healthz(port) == 503)
        daemon.current.source.simulation.node.faults.clear()
        eventually(lambda: healthz(port) == 200)
    finally:
        daemon.stop()
        thread.join(5)


def test_plugin_probe_fails_until_registered_with_the_kubelet(tmp_path: Path) -> None:
    port = free_port()
    env: dict[str, Any] = rendered_env("nvidia-device-plugin", "nvidia-device-plugin-ctr", port)
    directory = tmp_path / "device-plugins"
    args = [f"--kubelet-socket={directory / 'kubelet.sock'}", "--simulate=t4"]
    plugin = DevicePlugin(args, env, load_plugin_config(args, env))
    thread = threading.Thread(target=plugin.run, daemon=True)
    thread.start()
    kubelet = None
    try:
        eventually(lambda: healthz(port) == 503)  # serving, but no kubelet to register with
        time.sleep(0.3)
        assert healthz(port) == 503
        kubelet = KubeletStandIn(str(directory))
        kubelet.registered("nvidia.com/gpu", timeout=15)
        eventually(lambda: healthz(port) == 200, timeout=10)
    finally:
        plugin.stop()
        thread.join(5)
        if kubelet is not None:
            kubelet.stop()
