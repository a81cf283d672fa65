"""Hostile input and faults (issue 9): each case an adversarial run found, against the real programs.

The daemons never crash, never lose the node's labels, never write an invalid label, and every bad
input is one line naming the file, the field and what is accepted.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gfd.config import Config, load_config, parse_command_line
from gfd.daemon import Daemon as InProcess
from gfd.labels.compose import compose
from gfd.labels.valid import MAX_VALUE
from gfd.model import DeviceModel, Gpu, MigDevice, Vgpu
from tests.helpers import eventually, free_port, http_get, kill_all, read_labels

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "data" / "hostile"
LABEL_LINE = re.compile(r"nvidia\.com/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?="
                        r"(([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?)")
ENV = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}


def assert_valid_lines(text: str) -> None:
    for line in text.splitlines():
        match = LABEL_LINE.fullmatch(line)
        assert match, f"invalid label line {line!r}"
        assert len(line.split("=", 1)[1]) <= MAX_VALUE and len(line.split("=", 1)[0]) <= 63 + len("nvidia.com/")


def gfd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gfd", "--log-format=json", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=ENV)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The process failed with exactly one error line and no traceback."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if '"level": "error"' in line or
              not line.startswith("{")]
    assert len(errors) == 1, proc.stderr
    assert len(errors[0]) < 1000  # the accepted values may be a long list; a bad value is quoted short
    return errors[0]


class Daemon:
    """`gpu-feature-discovery` as a process writing a feature file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.out = tmp_path / "gfd"
        self.log = tmp_path / "daemon.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gfd", "--use-node-feature-api=false", f"--output-file={self.out}",
                 "--log-format=json", "--sleep-interval=50ms", *args], stdout=log, stderr=log, env=ENV)

    def text(self) -> str:
        return self.log.read_text()

    def stop_within_a_second(self) -> None:
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=5) == 0, self.text()[-4000:]
        assert time.monotonic() - sent < 1.0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def _start(*args: str) -> Daemon:
        d = Daemon(tmp_path, *args)
        started.append(d)
        eventually(d.out.exists, timeout=20)
        return d

    yield _start
    kill_all(d.proc for d in started)


# -- 1, 5, 6: a bad config on reload keeps the daemon and its labels ---------------------------------------
@pytest.mark.parametrize(("hostile", "says"), [
    ("non-utf8.yaml", "not UTF-8: byte 0xff at offset 34"),
    ("deep-nesting.yaml", "nested deeper than 50 levels"),
    ("alias-bomb.yaml", "expands to more than 100000 YAML nodes"),
    ("huge-sleep-interval.yaml", "flags.gfd.sleepInterval: 27777777777h46m39.999999999s is out of range"),
])
def test_a_hostile_config_on_reload_keeps_the_daemon_and_its_labels(daemon: Callable[..., Daemon],
                                                                     tmp_path: Path, hostile: str,
                                                                     says: str) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("version: v1\n")
    d = daemon("--simulate=t4", f"--config-file={cfg}")
    before = read_labels(d.out)
    cfg.write_bytes((HOSTILE / hostile).read_bytes())
    d.proc.send_signal(signal.SIGHUP)
    eventually(lambda: "reload failed; keeping the running config" in d.text(), timeout=10)
    reload_line = next(line for line in d.text().splitlines() if "reload failed" in line)
    assert says in reload_line and len(reload_line) < 500
    time.sleep(0.3)
    assert d.proc.poll() is None and read_labels(d.out) == before
    d.stop_within_a_second()


@pytest.mark.parametrize("hostile", ["non-utf8.yaml", "deep-nesting.yaml", "alias-bomb.yaml",
                                     "huge-sleep-interval.yaml", "replicas-10000.yaml"])
def test_a_hostile_config_at_start_is_one_line_and_quick(hostile: str) -> None:
    started = time.monotonic()
    line = one_error_line(gfd("--oneshot", "-o", "-", "--simulate=t4", f"--config-file={HOSTILE / hostile}"))
    assert time.monotonic() - started < 10
    assert f"config file {HOSTILE / hostile}" in line and "accepted:" in line


@pytest.mark.parametrize("interval", ["0s", "1ns", "-1s", "9000h"])
def test_busy_loop_and_overflowing_intervals_are_refused(interval: str) -> None:
    line = one_error_line(gfd("--simulate=t4", "-o", "-", f"--sleep-interval={interval}"))
    assert "out of range" in line and "10ms to 8760h" in line


def test_a_config_over_the_size_limit_is_one_line_and_quick(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("version: v1\n" + "# padding\n" * 120_000)  # 1.2 MB: 21 s with the pure-Python loader
    started = time.monotonic()
    line = one_error_line(gfd("--oneshot", "-o", "-", "--simulate=t4", f"--config-file={big}"))
    assert "larger than 1048576 bytes" in line and time.monotonic() - started < 10


def test_stdout_on_a_full_device_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "gfd", "--log-format=json", "--oneshot", "-o", "-",
                               "--simulate=t4"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
                              check=False, env=ENV)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error writing labels to standard output: No space left on device" in proc.stderr


_YAMLISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) |
                        st.text(max_size=20),
                        lambda children: st.lists(children, max_size=4) |
                        st.dictionaries(st.sampled_from(["gpus", "model", "count", "mig", "faults", "call",
                                                         "error", "gpu", "topology", "nvlink", "pcie", "bus_ids",
                                                         "name", "machine", "driver_version", "vgpu",
                                                         "extra_pci_functions", "address"]) | st.text(max_size=8),
                                        children, max_size=5), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(doc=_YAMLISH | st.fixed_dictionaries({"gpus": st.lists(
    st.fixed_dictionaries({"model": st.sampled_from(["T4", "A100-SXM4-40GB", "nope"])}, optional={
        "count": _YAMLISH, "mig": _YAMLISH, "bus_ids": _YAMLISH, "name": _YAMLISH}), max_size=3)},
    optional={"faults": _YAMLISH, "topology": _YAMLISH}))
def test_fuzz_profiles_load_or_fail_with_one_config_error(doc: Any) -> None:
    from gfd.config import ConfigError
    from gfd.discovery.simulated.profiles import build_node

    try:
        build_node(doc, "<fuzz>")
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("simulation profile <fuzz>")


# -- 2: signal storms ----------------------------------------------------------------------------------------
def test_a_sighup_storm_is_one_reload_and_sigterm_still_ends_it(daemon: Callable[..., Daemon]) -> None:
    d = daemon("--simulate=t4")
    before = read_labels(d.out)
    for _ in range(2000):
        os.kill(d.proc.pid, signal.SIGHUP)
    eventually(lambda: "config reloaded" in d.text(), timeout=10)
    time.sleep(0.5)
    assert d.proc.poll() is None
    reloads = d.text().count("Received SIGHUP")
    assert 1 <= reloads < 100  # coalesced
    assert read_labels(d.out).keys() == before.keys()
    assert "RecursionError" not in d.text() and "Traceback" not in d.text()
    d.stop_within_a_second()


def test_sigterm_during_a_storm_ends_the_process_within_a_second(daemon: Callable[..., Daemon]) -> None:
    d = daemon("--simulate=dgx-a100")
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            try:
                os.kill(d.proc.pid, signal.SIGHUP)
            except ProcessLookupError:
                return

    thread = threading.Thread(target=storm)
    thread.start()
    try:
        time.sleep(0.3)
        d.stop_within_a_second()
    finally:
        stop.set()
        thread.join()


# -- 3, 4: every label valid ---------------------------------------------------------------------------------
def _profile(tmp_path: Path, **fields: Any) -> str:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(fields))
    return str(path)


@pytest.mark.parametrize(("fields", "says"), [
    ({"driver_version": "550.54.15\nevil/injected=1"}, "error getting driver version"),
    ({"driver_version": "5=4.1"}, "error getting driver version"),
    ({"cuda_driver_version": -1}, "error getting CUDA driver version"),
])
def test_driver_values_that_would_inject_labels_are_refused(tmp_path: Path, fields: dict[str, Any],
                                                            says: str) -> None:
    path = _profile(tmp_path, gpus=[{"model": "T4"}], **fields)
    line = one_error_line(gfd("--oneshot", "-o", "-", f"--simulate={path}"))
    assert says in line


def test_a_vgpu_host_driver_record_with_a_newline_is_a_parse_error_not_a_label(tmp_path: Path) -> None:
    path = _profile(tmp_path, gpus=[{"model": "T4", "vgpu": {"version": "460.1\nx=1", "branch": "r460"}}])
    proc = gfd("--oneshot", "-o", "-", f"--simulate={path}")
    assert "vGPU" in one_error_line(proc) and proc.stdout == ""


RTX = "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition"


def test_over_long_product_names_become_valid_stable_unique_values(tmp_path: Path) -> None:
    path = _profile(tmp_path, machine="-DGX-" + "x" * 500, gpus=[
        {"model": "A100-SXM4-80GB", "name": RTX, "count": 2, "mig": ["1g.10gb", "2g.20gb", "1g.10gb+me"]}])
    runs = [gfd("--oneshot", "-o", "-", "--no-timestamp", f"--simulate={path}", "--mig-strategy=mixed")
            for _ in range(2)]
    assert runs[0].returncode == 0 and runs[0].stdout == runs[1].stdout
    assert_valid_lines(runs[0].stdout)
    labels = dict(line.split("=", 1) for line in runs[0].stdout.splitlines())
    products = [v for k, v in labels.items() if k.endswith(".product")]
    assert len(set(products)) == len(products) == 4  # gpu and three MIG profiles, still distinct
    assert labels["nvidia.com/mig-1g.10gb.product"].startswith("NVIDIA-RTX-PRO-6000-Blackwell-Max-Q-Workstation")
    assert re.fullmatch(r"DGX-x+-[0-9a-f]{8}", labels["nvidia.com/gpu.machine"])


_NAMES = st.text(st.characters(codec="utf-8"), max_size=200)
_VERSIONS = st.from_regex(r"[0-9]{1,6}\.[0-9]{1,6}(\.[0-9]{1,6})?", fullmatch=True)


def _gpu(name: str, mig: bool) -> Gpu:
    migs = (MigDevice(0, "MIG-a", 1, 0, 19, 0, "1g.10gb+me", 9728, 14, 1, 1, 1, 1, 0, 1, 1),) if mig else ()
    return Gpu(0, "GPU-a", name, 81920, (8, 0), "ampere", "nvidia", "0000:01:00.0", 0, 0, None, 0x030200, mig,
               mig, migs)


@settings(max_examples=300, deadline=None)
@given(name=_NAMES, machine=_NAMES, driver=_VERSIONS, host_version=_NAMES, host_branch=_NAMES, mig=st.booleans(),
       strategy=st.sampled_from(["none", "single", "mixed"]))
def test_fuzz_every_label_from_any_device_string_is_valid(name: str, machine: str, driver: str,
                                                          host_version: str, host_branch: str, mig: bool,
                                                          strategy: str) -> None:
    model = DeviceModel(driver, 12040, (_gpu(name, mig),), machine, Vgpu(True, host_version, host_branch))
    labels = compose(model, Config(mig_strategy=strategy), 1)
    from gfd.outputs.format import render

    assert_valid_lines(render(labels).decode())


# -- 5: one line instead of a traceback ------------------------------------------------------------------
def test_dev_zero_and_fifos_are_refused_without_reading_them(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        line = one_error_line(gfd("--oneshot", "-o", "-", "--simulate=t4", f"--config-file={path}", timeout=10))
        assert "not a regular file" in line
        line = one_error_line(gfd("--oneshot", "-o", "-", f"--simulate={path}", timeout=10))
        assert f"simulation profile {path}" in line and "not a regular file" in line
    proc = gfd("--oneshot", "-o", "-", "--simulate=t4", "--machine-type-file=/dev/zero", timeout=10)
    assert proc.returncode == 0 and "nvidia.com/gpu.machine=unknown" in proc.stdout


MALFORMED_PROFILES = [
    "[]", "42", "gpus: 3", "gpus: [3]", "gpus: [{model: T4, count: many}]", "gpus: [{model: T4, mig: 7}]",
    "gpus: [{model: A100-SXM4-40GB, mig: [{}]}]", "gpus: [{model: T4, bus_ids: [../../etc]}]",
    "gpus: [{model: T4}]\nfaults: [3]", "gpus: [{model: T4}]\nfaults: [{call: x, error: NOPE}]",
    "gpus: [{model: T4}]\ntopology: {nvlink: [[0, 5, 1]]}", "gpus: [{model: T4}]\ntopology: {pcie: {bogus: []}}",
    "gpus: [{model: T4}]\nextra_pci_functions: [{address: '../x'}]", "gpus: [{model: T4, compute_capability: 8}]",
    "gpus: [{model: T4}]\ncuda_driver_version: lots", "{gpus: [{model: T4}], topology: 5}",
    # Sizes that would build (and hold) millions of GPUs or links: refused before anything is built.
    "gpus: [{model: T4, count: 100000000}]", "gpus: [{model: T4, count: -1}]",
    "gpus: [{model: T4, count: 2}]\ntopology: {nvlink: [[0, 1, 1000000000]]}",
    "gpus: [{model: T4}]\ntelemetry: {gpu_util: {sine: {min: 0, max: 1, period_s: 0}}}",
]


@pytest.mark.parametrize("profile", MALFORMED_PROFILES)
def test_malformed_profiles_are_one_line(tmp_path: Path, profile: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(profile + "\n")
    line = one_error_line(gfd("--oneshot", "-o", "-", f"--simulate={path}"))
    assert f"simulation profile {path}" in line


@pytest.mark.parametrize("address", ["localhost", "host:port", ":99999", "::1:9102", "256.1.1.1:9102"])
def test_bad_metrics_addresses_are_one_line(tmp_path: Path, address: str) -> None:
    proc = gfd("--simulate=t4", f"--output-file={tmp_path / 'gfd'}", "--use-node-feature-api=false",
               f"--metrics-address={address}")
    assert "metrics" in one_error_line(proc)


def test_a_metrics_address_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = gfd("--simulate=t4", f"--output-file={tmp_path / 'gfd'}", "--use-node-feature-api=false",
                   f"--metrics-address=127.0.0.1:{busy.getsockname()[1]}")
    assert "cannot serve metrics" in one_error_line(proc)


def test_the_simulation_tree_is_removed_on_exit() -> None:
    def trees() -> set[str]:
        return {n for n in os.listdir("/dev/shm") if n.startswith("gfd-sim-")} if os.path.isdir("/dev/shm") else set()

    before = trees()
    assert gfd("--oneshot", "-o", "-", "--simulate=t4").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "gfd", "--simulate=t4", "-o", "-", "--log-format=json",
                             "--use-node-feature-api=false"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None and proc.stdout.readline()  # labelled once: the tree exists
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=5)
    assert trees() <= before


# -- 8: any exception mid-run -----------------------------------------------------------------------------
@contextlib.contextmanager
def in_process_daemon(out: Path, *args: str) -> Iterator[InProcess]:
    """The daemon on a thread (for faults injected into its simulation or its objects), stopped cleanly."""
    cmdline = parse_command_line([*args, "--sleep-interval=10ms", "--use-node-feature-api=false",
                                  f"--output-file={out}", "--log-format=json"], {})
    d = InProcess(cmdline, load_config(cmdline))
    thread = threading.Thread(target=d.run, daemon=True)
    thread.start()
    try:
        eventually(out.exists)
        yield d
        assert thread.is_alive()
    finally:
        d.stop()
        thread.join(5)


def test_a_garbled_sysfs_file_mid_run_keeps_the_daemon_and_its_labels(tmp_path: Path) -> None:
    out = tmp_path / "gfd"
    with in_process_daemon(out, "--simulate=dgx-a100") as d:
        before = out.read_text()
        assert d.current is not None and d.current.source.simulation is not None
        host = Path(d.current.source.simulation.host_root)
        vendor = next((host / "sys/bus/pci/devices").iterdir()) / "vendor"
        vendor.write_bytes(b"0x10\xff\n")
        machine = host / "sys/class/dmi/id/product_name"
        machine.write_bytes(b"\xff\xfe\n")  # not UTF-8: the machine type is unknown, nothing crashes
        eventually(lambda: read_labels(out).get("nvidia.com/gpu.machine") == "unknown")
        assert set(read_labels(out)) == {line.split("=", 1)[0] for line in before.splitlines()}


def test_an_unexpected_exception_in_a_pass_is_survived_and_counted(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gfd"
    with in_process_daemon(out, "--simulate=t4") as d:
        before = out.read_text()
        assert d.current is not None
        source = d.current.source
        real_read = source.read

        def broken_read(topology: bool = False) -> DeviceModel:
            raise ZeroDivisionError("a bug")

        monkeypatch.setattr(source, "read", broken_read)
        eventually(lambda: (d.metrics.registry.get_sample_value("gfd_cycle_exceptions_total",
                                                                 {"type": "ZeroDivisionError"}) or 0) >= 3)
        assert out.read_text() == before
        monkeypatch.setattr(source, "read", real_read)
    assert not out.exists()  # a clean stop still removes the file, as upstream


def test_an_unexpected_exception_while_reloading_keeps_the_running_config(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from gfd.discovery.session import NodeSource

    out = tmp_path / "gfd"
    with in_process_daemon(out, "--simulate=t4") as d:
        before = read_labels(out)
        real = NodeSource.for_gfd.__func__  # type: ignore[attr-defined]
        calls: list[int] = []

        def first_start_fails(cls: type[NodeSource], config: Config) -> NodeSource:
            calls.append(1)
            if len(calls) == 1:
                raise OSError(28, "No space left on device")
            return real(cls, config)  # type: ignore[no-any-return]

        monkeypatch.setattr(NodeSource, "for_gfd", classmethod(first_start_fails))
        d.request_reload()
        eventually(lambda: len(calls) == 2)
        assert d.metrics.registry.get_sample_value("gfd_reload_failures_total") == 1
        out.unlink()  # the restarted run writes the labels again
        eventually(out.exists)
        assert read_labels(out).keys() == before.keys()


# -- 9: metrics and /healthz under slow clients ------------------------------------------------------------
def test_an_idle_connection_does_not_block_healthz(daemon: Callable[..., Daemon]) -> None:
    port = free_port()
    d = daemon("--simulate=t4", f"--metrics-address=127.0.0.1:{port}")
    eventually(lambda: http_get(f"http://127.0.0.1:{port}/healthz") is not None, timeout=10)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]  # connect, send nothing
    try:
        started = time.monotonic()
        assert http_get(f"http://127.0.0.1:{port}/healthz") == (200, "ok")
        assert (http_get(f"http://127.0.0.1:{port}/metrics") or (0, ""))[0] == 200
        assert http_get(f"http://127.0.0.1:{port}/nope") == (404, "not found: try /metrics or /healthz")
        assert time.monotonic() - started < 2
    finally:
        for s in idle:
            s.close()
    d.stop_within_a_second()


def test_ipv6_and_all_interface_addresses_are_served(tmp_path: Path) -> None:
    from gfd.httpserver import parse_address

    assert parse_address(":9102") == ("", 9102)
    assert parse_address("localhost:9102") == ("localhost", 9102)
    assert parse_address("[::1]:9102") == ("::1", 9102)
