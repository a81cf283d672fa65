"""The daemon in-process (a thread) on simulated nodes: retries, change-only writes, faults, metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog.testing

from gfd.backoff import Backoff
from gfd.config import load_config, parse_command_line
from gfd.daemon import Daemon
from gfd.discovery.simulated.install import Simulation
from gfd.discovery.simulated.profiles import Fault, build_node
from tests.apiserver import FakeApiServer
from tests.helpers import InThreads, eventually, free_port, http_get, read_labels, simulation_of

ROOT = Path(__file__).resolve().parent.parent


def sample(daemon: Daemon, name: str, **labels: str) -> float:
    value = daemon.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


class Running:
    def __init__(self, daemon: Daemon, thread: threading.Thread, out: Path) -> None:
        self.daemon, self.thread, self.out = daemon, thread, out

    @property
    def sim(self) -> Simulation:
        return simulation_of(self.daemon)

    def cycles(self, result: str = "success") -> float:
        return sample(self.daemon, "gfd_cycles_total", result=result)

    def wait_cycles(self, n: int = 2, result: str = "success") -> None:
        target = self.cycles(result) + n
        eventually(lambda: self.cycles(result) >= target)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    threads = InThreads()

    def _start(*argv: str, env: dict[str, str] | None = None, output: bool = True) -> Running:
        out = tmp_path / "features.d" / "gfd"
        out.parent.mkdir(exist_ok=True)
        args = ["--sleep-interval=10ms", "--log-format=json", *argv]
        if output:
            args += ["--use-node-feature-api=false", f"--output-file={out}"]
        cmdline = parse_command_line(args, env or {})
        daemon = Daemon(cmdline, load_config(cmdline))
        daemon.nvml_backoff = Backoff(0.01, 0.05, jitter=False)
        daemon.output_backoff = Backoff(0.01, 0.05, jitter=False)
        running = Running(daemon, threads.start(daemon.run, daemon.stop), out)
        eventually(lambda: daemon.current is not None)
        return running

    yield _start
    threads.stop_all()


def test_labels_appear_once_nvml_arrives_without_restart(start: Callable[..., Running], tmp_path: Path) -> None:
    r = start("--simulate", "no-library")
    r.wait_cycles(3, "error")
    assert not r.out.exists()  # failOnInitError=true: nothing until NVML works
    assert sample(r.daemon, "gfd_nvml_up") == 0
    r.sim.set_library_present(True)
    eventually(lambda: read_labels(r.out).get("nvidia.com/gpu.count") == "8")
    assert sample(r.daemon, "gfd_nvml_up") == 1
    assert sample(r.daemon, "gfd_nvml_errors_total", call="nvmlInit", error="ERROR_LIBRARY_NOT_FOUND") >= 1


def test_without_fail_on_init_error_the_gpu_less_set_is_replaced_when_nvml_arrives(
        start: Callable[..., Running]) -> None:
    r = start("--simulate", "no-library", "--fail-on-init-error=false", "--no-timestamp")
    eventually(lambda: read_labels(r.out) == {"nvidia.com/vgpu.present": "false"})
    r.sim.set_library_present(True)
    eventually(lambda: read_labels(r.out).get("nvidia.com/gpu.product") == "NVIDIA-A100-SXM4-40GB")


def test_unchanged_labels_are_not_rewritten_and_timestamp_is_fixed(start: Callable[..., Running]) -> None:
    r = start("--simulate", "dgx-a100")
    # The file appears inside the first cycle, before that cycle is counted: wait for the count, so
    # the five cycles below are all later ones (each of which skips its write).
    eventually(lambda: r.cycles() >= 1)
    first = r.out.read_text()
    inode, mtime = os.stat(r.out).st_ino, os.stat(r.out).st_mtime_ns
    r.wait_cycles(5)
    assert (os.stat(r.out).st_ino, os.stat(r.out).st_mtime_ns) == (inode, mtime)
    assert r.out.read_text() == first
    assert sample(r.daemon, "gfd_output_writes_total", output="FeatureFile") == 1
    assert sample(r.daemon, "gfd_output_writes_skipped_total") >= 5


@pytest.mark.parametrize("timestamp", [True, False])
def test_a_reload_that_changes_nothing_says_so(start: Callable[..., Running], timestamp: bool) -> None:
    """A SIGHUP starts a new run with a new timestamp (upstream's) and writes the labels again; the log line
    compares them with what was published before the reload, not with nothing."""
    with structlog.testing.capture_logs() as logged:
        r = start("--simulate", "dgx-a100", *([] if timestamp else ["--no-timestamp"]))
        eventually(lambda: r.cycles() >= 1)
        time.sleep(1.0 if timestamp else 0)  # the next run's timestamp, in whole seconds, differs
        r.daemon.request_reload()
        eventually(lambda: sum(e["event"] == "labels published" for e in logged) == 2)
    first, again = (e for e in logged if e["event"] == "labels published")
    assert first["changed"] == f"{first['count']} keys" and again["count"] == first["count"]
    assert again["changed"] == ("nothing but the timestamp" if timestamp else "nothing")
    assert "config reloaded" in [e["event"] for e in logged]


def test_a_deleted_feature_file_is_written_again(start: Callable[..., Running]) -> None:
    r = start("--simulate", "t4")
    eventually(r.out.exists)
    content = r.out.read_text()
    r.out.unlink()
    eventually(r.out.exists)
    assert r.out.read_text() == content


FAULT_CALLS = ["nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetMigMode",
               "nvmlDeviceGetGpuFabricInfoV", "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetUUID"]


@pytest.mark.parametrize("call", FAULT_CALLS)
def test_an_nvml_error_mid_run_keeps_the_published_labels(start: Callable[..., Running], call: str) -> None:
    r = start("--simulate", "a100-80gb-mig-mixed", "--mig-strategy=mixed")
    eventually(r.out.exists)
    before = r.out.read_text()
    r.sim.node.faults.append(Fault(call, 999))
    r.wait_cycles(3, "error")
    assert r.out.read_text() == before
    # Metrics name the pynvml function (the C symbol without its _v2 suffix).
    assert sample(r.daemon, "gfd_nvml_errors_total", call=call.removesuffix("_v2"), error="ERROR_UNKNOWN") > 0
    r.sim.node.faults.clear()
    r.wait_cycles(3)
    assert r.out.read_text() == before


def test_a_lost_gpu_leaves_the_labels_and_is_reported_until_it_returns(start: Callable[..., Running]) -> None:
    r = start("--simulate", "dgx-h100")
    eventually(r.out.exists)
    before = read_labels(r.out)
    r.sim.node.gpus[3].lost = True
    eventually(lambda: read_labels(r.out).get("nvidia.com/gpu.count") == "7")
    changed = {k for k, v in read_labels(r.out).items() if before.get(k) != v}
    assert changed == {"nvidia.com/gpu.count"}
    assert sample(r.daemon, "gfd_gpus_lost") == 1
    assert sample(r.daemon, "gfd_nvml_errors_total", call="nvmlDeviceGetHandleByIndex", error="ERROR_GPU_IS_LOST") > 0
    ok, reason = r.daemon.healthy()
    assert ok and "GPU 3" in reason and "ERROR_GPU_IS_LOST" in reason
    r.sim.node.gpus[3].lost = False
    eventually(lambda: read_labels(r.out) == before)
    assert sample(r.daemon, "gfd_gpus_lost") == 0
    assert r.daemon.healthy() == (True, "ok")


def test_mig_layout_change_between_cycles_is_seen(start: Callable[..., Running], tmp_path: Path) -> None:
    r = start("--simulate", "a100-mig-single", "--mig-strategy=mixed", "--no-timestamp")
    eventually(lambda: read_labels(r.out).get("nvidia.com/mig-1g.5gb.count") == "56")
    relayout = build_node({"gpus": [{"model": "A100-SXM4-40GB", "mig": ["3g.20gb", "3g.20gb"]}]}, "<test>")
    r.sim.node.gpus[0].mig = relayout.gpus[0].mig
    eventually(lambda: read_labels(r.out).get("nvidia.com/mig-3g.20gb.count") == "2")
    labels = read_labels(r.out)
    assert labels["nvidia.com/mig-1g.5gb.count"] == "49"
    assert labels["nvidia.com/mig-3g.20gb.memory"] == "19968"


def test_nvml_calls_per_steady_cycle_are_fewer_than_a_rediscovery(start: Callable[..., Running]) -> None:
    r = start("--simulate", "a100-80gb-mig-mixed", "--mig-strategy=mixed")
    r.wait_cycles(2)
    before, cycles = r.sim.library.calls.total(), r.cycles()
    r.wait_cycles(5)
    per_cycle = (r.sim.library.calls.total() - before) / (r.cycles() - cycles)
    assert per_cycle < 413 / 2  # a full read of this profile makes 413 calls (bench.oneshot)


def test_metrics_and_healthz(start: Callable[..., Running]) -> None:
    port = free_port()
    r = start("--simulate", "t4", f"--metrics-address=127.0.0.1:{port}")
    r.daemon.health_min_s = 0.2
    r.wait_cycles(2)
    base = f"http://127.0.0.1:{port}"
    eventually(lambda: (http_get(base + "/healthz") or (0, ""))[0] == 200)
    status, body = http_get(base + "/metrics") or (0, "")
    assert status == 200
    for name in ("gfd_cycles_total", "gfd_cycle_duration_seconds_bucket", "gfd_last_success_timestamp_seconds",
                 "gfd_labels", "gfd_output_writes_total", "gfd_nvml_up"):
        assert name in body
    r.sim.node.faults.append(Fault("nvmlDeviceGetCount_v2", 999))
    eventually(lambda: (http_get(base + "/healthz") or (0, ""))[0] == 503)
    assert "no successful labelling cycle" in (http_get(base + "/healthz") or (0, ""))[1]


def test_a_reader_never_sees_a_partial_file(start: Callable[..., Running], tmp_path: Path) -> None:
    r = start("--simulate", "dgx-a100", "--sleep-interval=10ms", "--no-timestamp")
    eventually(r.out.exists)
    machine = Path(r.sim.host_root) / "sys/class/dmi/id/product_name"
    stop = threading.Event()

    def flip() -> None:  # a changing machine type makes every cycle rewrite the file
        n = 0
        while not stop.is_set():
            machine.write_text(f"machine {n % 2}\n")
            n += 1
            time.sleep(0.001)

    flipper = threading.Thread(target=flip)
    flipper.start()
    expected_lines = len(r.out.read_text().splitlines())
    # The reader reads at least 10 000 times and goes on until the daemon has rewritten the file 20 times.
    done = tmp_path / "done"
    reader = ("import os, sys\nbad = n = 0\nwhile n < 10000 or not os.path.exists(sys.argv[3]):\n"
              "    n += 1\n"
              "    data = open(sys.argv[1], 'rb').read()\n"
              "    lines = data.splitlines()\n"
              "    complete = data.endswith(b'\\n') and len(lines) == int(sys.argv[2])\n"
              "    if not complete or not all(b'=' in line for line in lines) or b'vgpu' not in lines[-1]:\n"
              "        bad += 1\n"
              "print(bad)\n")
    try:
        proc = subprocess.Popen([sys.executable, "-c", reader, str(r.out), str(expected_lines), str(done)],
                                stdout=subprocess.PIPE, text=True)
        eventually(lambda: sample(r.daemon, "gfd_output_writes_total", output="FeatureFile") > 20, timeout=60)
        done.touch()
        out, _ = proc.communicate(timeout=120)
    finally:
        stop.set()
        flipper.join()
    assert proc.returncode == 0 and out.strip() == "0"


def test_node_feature_mode_makes_no_requests_when_nothing_changes(start: Callable[..., Running], tmp_path: Path,
                                                                  apiserver: FakeApiServer) -> None:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    r = start("--simulate", "dgx-a100", "--kubeconfig", kubeconfig, "--node-name", "node1", "--namespace", "ns",
              output=False)
    eventually(lambda: len(apiserver.requests("POST")) == 1)
    # One long-lived watch request notices a deletion; then nothing more while nothing changes.
    eventually(lambda: any("watch=true" in q.path for q in apiserver.requests("GET")))
    apiserver.clear_requests()
    r.wait_cycles(20)
    assert apiserver.requests() == []
    # A transient server error on the next write is retried with backoff; the loop never stops.
    apiserver.fail("PUT", "nodefeatures", status=500, times=2)
    r.sim.node.faults.append(Fault("nvmlDeviceGetCount_v2", 999))  # a failed pass: labels stay, nothing written
    r.wait_cycles(2, "error")
    assert apiserver.requests() == []
    r.sim.node.faults.clear()
    r.sim.node.machine = "changed"
    (Path(r.sim.host_root) / "sys/class/dmi/id/product_name").write_text("changed\n")
    eventually(lambda: apiserver.get_object(
        "/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/ns/nodefeatures/nvidia-features-for-node1"
    )["spec"]["labels"]["nvidia.com/gpu.machine"] == "changed")  # type: ignore[index]
    # After a failed write the object is re-read before the next attempt.
    assert [r.method for r in apiserver.requests() if "watch=true" not in r.path] == \
        ["PUT", "GET", "PUT", "GET", "PUT"]
    assert sample(r.daemon, "gfd_api_requests_total", verb="update", code="500") == 2


def test_stop_is_prompt_while_an_api_write_hangs(start: Callable[..., Running], tmp_path: Path,
                                                 apiserver: FakeApiServer) -> None:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    apiserver.fail("GET", "nodefeatures", status=0, delay=8.0)  # a hung API server (client timeout: 10 s)
    r = start("--simulate", "t4", "--kubeconfig", kubeconfig, "--node-name", "node1", output=False)
    eventually(lambda: len(apiserver.requests("GET")) == 1)
    stopped = time.monotonic()
    r.daemon.stop()
    r.thread.join(5)
    assert not r.thread.is_alive()
    assert time.monotonic() - stopped < 1.0


def test_a_deleted_node_feature_is_written_again_within_a_second(start: Callable[..., Running], tmp_path: Path,
                                                                  apiserver: FakeApiServer) -> None:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    start("--simulate", "t4", "--kubeconfig", kubeconfig, "--node-name", "node1", "--namespace", "ns",
          "--sleep-interval=1h", output=False)  # no cycle would come for an hour: only the watch can help
    path = "/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/ns/nodefeatures/nvidia-features-for-node1"
    eventually(lambda: apiserver.get_object(path) is not None)
    eventually(lambda: any("watch=true" in q.path for q in apiserver.requests("GET")))
    apiserver.delete_object(path)
    deleted = time.monotonic()
    eventually(lambda: apiserver.get_object(path) is not None, timeout=5)
    assert time.monotonic() - deleted < 1.0
    labels = apiserver.get_object(path)["spec"]["labels"]  # type: ignore[index]
    assert labels["nvidia.com/gpu.count"] == "4"
