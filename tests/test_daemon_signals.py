"""Signals against the real process: SIGTERM mid-cycle, SIGHUP reload with a changed and a broken config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.apiserver import FakeApiServer
from tests.helpers import eventually, kill_all, read_labels

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def _spawn(*args: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "gfd", "--use-node-feature-api=false", f"--output-file={tmp_path / 'gfd'}",
             "--log-format=json", *args],
            stdout=log, stderr=log, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "daemon.log").read_text()


@pytest.mark.parametrize("keep", [False, True])
def test_sigterm_during_cycles_stops_cleanly(spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path,
                                             keep: bool) -> None:
    # The shortest interval labels nearly back to back, so the signal lands during a cycle.
    proc = spawn("--simulate=a100-80gb-mig-mixed", "--mig-strategy=mixed", "--sleep-interval=10ms",
                 *(["--keep-output-on-exit"] if keep else []))
    eventually(lambda: (tmp_path / "gfd").exists(), timeout=20)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - sent < 1.0
    assert (tmp_path / "gfd").exists() is keep
    assert '"event": "Exiting"' in log_text(tmp_path)


def test_sighup_reloads_a_changed_config_and_survives_a_broken_one(spawn: Callable[..., subprocess.Popen[bytes]],
                                                                    tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"

    def write_config(replicas: int) -> None:
        cfg.write_text(yaml.safe_dump({"version": "v1", "sharing": {"timeSlicing": {
            "resources": [{"name": "nvidia.com/gpu", "replicas": replicas}]}}}))

    write_config(2)
    out = tmp_path / "gfd"
    proc = spawn("--simulate=t4", f"--config-file={cfg}", "--sleep-interval=50ms")
    eventually(lambda: read_labels(out).get("nvidia.com/gpu.replicas") == "2", timeout=20)
    first_timestamp = read_labels(out)["nvidia.com/gfd.timestamp"]
    time.sleep(1.1)  # the timestamp has one-second resolution

    write_config(4)
    proc.send_signal(signal.SIGHUP)
    eventually(lambda: read_labels(out).get("nvidia.com/gpu.replicas") == "4")
    assert read_labels(out)["nvidia.com/gfd.timestamp"] != first_timestamp  # a reload starts a new run

    cfg.write_text("version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n"
                   "      replicas: 1\n")
    proc.send_signal(signal.SIGHUP)
    eventually(lambda: "reload failed; keeping the running config" in log_text(tmp_path))
    assert "number of replicas must be >= 2" in log_text(tmp_path)
    time.sleep(0.2)
    assert proc.poll() is None
    assert read_labels(out).get("nvidia.com/gpu.replicas") == "4"
    assert out.exists()  # a reload never removes the file (upstream does)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0


def test_infinite_interval_labels_once_and_keeps_the_file(spawn: Callable[..., subprocess.Popen[bytes]],
                                                          tmp_path: Path) -> None:
    proc = spawn("--simulate=l4", "--sleep-interval=infinite")
    eventually(lambda: (tmp_path / "gfd").exists(), timeout=20)
    time.sleep(0.2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 0
    assert (tmp_path / "gfd").exists()


def test_node_feature_mode_without_cluster_credentials_is_one_clear_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "gfd", "--simulate=t4", "--node-name=n1", "--log-format=json"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    assert "failed to create clientsets" in proc.stderr and "Traceback" not in proc.stderr


NODE_FEATURE = "/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/ns/nodefeatures"


def node_feature_daemon(apiserver: FakeApiServer, tmp_path: Path) -> subprocess.Popen[bytes]:
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "gfd", "--simulate=t4", "--log-format=json", "--node-name=node1", "--namespace=ns",
         f"--kubeconfig={apiserver.kubeconfig(str(tmp_path / 'kubeconfig'))}"],
        stdout=log, stderr=log, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})


def test_sigterm_during_an_api_write_completes_it(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.fail("POST", NODE_FEATURE, status=0, delay=0.3)  # the create takes 0.3 s to be answered
    proc = node_feature_daemon(apiserver, tmp_path)
    try:
        eventually(lambda: len(apiserver.requests("POST")) == 1, timeout=20)  # the write is in flight
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        kill_all([proc])
    events = [json.loads(line)["event"] for line in log_text(tmp_path).splitlines()]
    assert events.index("Received signal, shutting down") < events.index("labels published") < \
        events.index("Exiting")
    assert apiserver.get_object(f"{NODE_FEATURE}/nvidia-features-for-node1") is not None


def test_sigterm_during_a_hung_api_write_cancels_it_and_exits_0_at_once(apiserver: FakeApiServer,
                                                                                 tmp_path: Path) -> None:
    apiserver.fail("GET", f"{NODE_FEATURE}/", status=0, delay=8.0)  # hung (the client's read timeout: 10 s)
    proc = node_feature_daemon(apiserver, tmp_path)
    try:
        eventually(lambda: len(apiserver.requests("GET")) == 1, timeout=20)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - sent < 2.0  # the grace (0.5 s) and the exit, not the request's 10 s timeout
    finally:
        kill_all([proc])
    assert "writing labels interrupted by the stop" in log_text(tmp_path)
    assert "Traceback" not in log_text(tmp_path)
