"""config-manager: selection rules, the symlink, signalling a real process, and the node watch."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gfd.config import ConfigError
from gfd.configmanager.apply import find_pid, point, send
from gfd.configmanager.cli import ConfigManager, load_settings, main
from gfd.configmanager.options import Settings
from gfd.configmanager.selection import EMPTY, SelectError, select
from gfd.kube.client import connect
from tests.apiserver import FakeApiServer

LABEL = "nvidia.com/device-plugin.config"
NODE = "/api/v1/nodes/gpu-node-1"


@pytest.mark.parametrize(("label", "available", "default", "fallbacks", "expected"), [
    ("mig", ["default", "mig"], "", ["named"], "mig"),
    (None, ["a", "b"], "b", ["named"], "b"),
    (None, ["default", "b"], "", ["named", "single"], "default"),
    (None, ["only"], "", ["named", "single"], "only"),
    (None, ["a", "b"], "", ["named", "single", "empty"], EMPTY),
    (None, [], "", ["empty"], EMPTY),
])
def test_selection(label: str | None, available: list[str], default: str, fallbacks: list[str],
                   expected: str) -> None:
    assert select(label, available, default, fallbacks) == expected


@pytest.mark.parametrize(("label", "available", "default", "fallbacks", "message"), [
    ("nope", ["a"], "", ["named"], "specified config nope does not exist"),
    (None, ["a", "b"], "c", ["named"], "default config c does not exist"),
    (None, [], "", ["named"], "no configuration files available"),
    (None, ["a", "b"], "", ["named", "single"], "no config was set, no default was provided, and all fallbacks failed"),
    (None, ["a"], "", ["bogus"], "unknown fallback strategy: bogus"),
])
def test_selection_errors(label: str | None, available: list[str], default: str, fallbacks: list[str],
                          message: str) -> None:
    with pytest.raises(SelectError, match=message):
        select(label, available, default, fallbacks)


def test_point_is_atomic_and_idempotent(tmp_path: Path) -> None:
    dst = str(tmp_path / "config.yaml")
    assert point(dst, "/available-configs/a") is True
    assert os.readlink(dst) == "/available-configs/a"
    assert point(dst, "/available-configs/a") is False
    assert point(dst, "/dev/null") is True
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def hup_child(tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    """A Python script file called `name`, run the way a console script runs (`python3 /path/name`); it
    writes a file when it gets SIGHUP."""
    marker = tmp_path / "got-hup"
    script = tmp_path / "bin" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text("import signal, sys, time, pathlib\n"
                      f"signal.signal(signal.SIGHUP, lambda *a: pathlib.Path({str(marker)!r}).write_text('hup'))\n"
                      "print('ready', flush=True)\n"
                      "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def got_hup(marker: Path, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text() == "hup":
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("script", ["gpu-feature-discovery", "nvidia-device-plugin"])
def test_signal_reaches_the_real_console_script(tmp_path: Path, script: str) -> None:
    """The installed entry point, run as production runs it (`python3 /…/bin/<script>`), not a faked argv[0]."""
    log = tmp_path / "log"
    args = ["--simulate=t4", "--log-format=json"]
    args += [f"--output-file={tmp_path / 'gfd'}", "--use-node-feature-api=false"] \
        if script == "gpu-feature-discovery" else [f"--kubelet-socket={tmp_path / 'kubelet.sock'}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / script), *args], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        # Labelling or serving: the signal handlers are installed by then.
        while "Writing labels" not in log.read_text() and "serving" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert os.path.basename(argv[0].decode()).startswith("python")  # how a console script really runs
        assert find_pid(script) == proc.pid
        send(script, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "Received SIGHUP" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
    with pytest.raises(LookupError, match="error finding pid: no process found"):
        find_pid("no-such-process-name")


def test_in_a_pod_only_a_process_of_that_pod_is_signalled(tmp_path: Path) -> None:
    """With hostPID every process of the node is visible: a tenant's process of the same name, whatever its PID,
    is not ours to signal (its cgroup names another pod). Cgroup paths as the kubelet's systemd driver makes them."""
    ours, tenant = "0b9a3c5e-1f2d-4e6a-8b7c-9d0e1f2a3b4c", "7c6b5a49-3827-4615-a4b3-c2d1e0f9a8b7"

    def process(pid: int, argv: list[str], pod: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        slice_ = f"kubepods-besteffort-pod{pod.replace('-', '_')}.slice"
        (tmp_path / str(pid) / "cgroup").write_text(f"0::/kubepods.slice/kubepods-besteffort.slice/{slice_}/"
                                                    f"cri-containerd-{pid:064x}.scope\n")

    process(os.getpid(), ["config-manager"], ours)
    process(5, ["nvidia-dra-plugin"], tenant)  # a tenant's decoy
    with pytest.raises(LookupError):
        find_pid("nvidia-dra-plugin", str(tmp_path))
    process(900001, ["/usr/bin/python3", "/usr/local/bin/nvidia-dra-plugin", "--node-name=n"], ours)
    assert find_pid("nvidia-dra-plugin", str(tmp_path)) == 900001


def settings(tmp_path: Path, kubeconfig: str, **overrides: Any) -> Settings:
    src = tmp_path / "available-configs"
    src.mkdir(exist_ok=True)
    for name in ("default", "mig-mixed"):
        (src / name).write_text(f"version: v1\n# {name}\n")
    (src / "..data").mkdir(exist_ok=True)  # Kubernetes' own entry in a ConfigMap mount: ignored
    env = {"NODE_NAME": "gpu-node-1", "NODE_LABEL": LABEL, "CONFIG_FILE_SRCDIR": str(src),
           "CONFIG_FILE_DST": str(tmp_path / "config.yaml"), "FALLBACK_STRATEGIES": "named,single",
           "KUBECONFIG": kubeconfig, "SEND_SIGNAL": "false", **overrides}  # as the chart's init container
    return load_settings([], env)


def put_node(apiserver: FakeApiServer, label: str | None) -> None:
    current = apiserver.get_object(NODE) or {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-1"}}
    current["metadata"]["labels"] = {LABEL: label} if label else {}
    apiserver.put_object(NODE, current)


def test_oneshot_picks_the_labelled_config_or_fails(tmp_path: Path, apiserver: FakeApiServer) -> None:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    put_node(apiserver, "mig-mixed")
    s = settings(tmp_path, kubeconfig, ONESHOT="true")
    assert ConfigManager(s, connect(kubeconfig, "config-manager")).run_once() == 0
    assert os.readlink(s.dst) == os.path.join(s.srcdir, "mig-mixed")
    put_node(apiserver, "does-not-exist")
    env = {"NODE_NAME": "gpu-node-1", "NODE_LABEL": LABEL, "CONFIG_FILE_SRCDIR": s.srcdir,
           "CONFIG_FILE_DST": s.dst, "ONESHOT": "true", "KUBECONFIG": kubeconfig}
    assert main([], env) == 1


def test_missing_required_environment_names_where_to_set_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], {"NODE_LABEL": LABEL}) == 1
    assert capsys.readouterr().err == \
        "config-manager: invalid <node-name>: must not be empty string (set --node-name or NODE_NAME)\n"
    assert main([], {"NODE_NAME": "n1"}) == 1
    assert capsys.readouterr().err == ("config-manager: invalid <config-file-srcdir>: must not be empty string "
                                       "(set --config-file-srcdir or CONFIG_FILE_SRCDIR)\n")


def test_help_works_without_a_cluster_and_lists_upstreams_flags() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "config-manager"), "--help"], capture_output=True,
                          text=True, timeout=30, check=False, env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    for flag in ("--node-name", "--node-label", "--config-file-srcdir", "--config-file-dst", "--default-config",
                 "--fallback-strategies", "--send-signal", "--signal", "--process-to-signal", "--oneshot",
                 "--kubeconfig"):
        assert flag in proc.stdout
    assert "named, single, empty" in proc.stdout  # accepted values are listed


def test_upstream_defaults_and_flags_over_env(tmp_path: Path) -> None:
    s = load_settings(["--node-name=n1", "--config-file-srcdir=/a", "--config-file-dst=/b",
                       "--fallback-strategies=named,empty"], {"NODE_NAME": "from-env", "SIGNAL": "10"})
    assert (s.node_name, s.node_label, s.send_signal, s.signal, s.process, s.fallbacks) == \
        ("n1", "nvidia.com/device-plugin.config", True, 10, "nvidia-device-plugin", ("named", "empty"))
    with pytest.raises(ConfigError, match="invalid value"):
        load_settings(["--fallback-strategies=nope"], {})


@pytest.mark.parametrize("status", [401, 403, 500])
def test_api_errors_are_one_line_not_a_traceback(tmp_path: Path, apiserver: FakeApiServer, status: int,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    apiserver.fail("GET", "nodes", status=status, times=10)
    s = settings(tmp_path, kubeconfig, ONESHOT="true")
    assert ConfigManager(s, connect(kubeconfig, "config-manager")).run_once() == 1
    err = capsys.readouterr()
    assert f"HTTP {status}" in err.out + err.err and "Traceback" not in err.out + err.err


def test_connection_refused_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "configs"
    src.mkdir()
    (src / "default").write_text("version: v1\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "users": [{"name": "u", "user": {}}]}))
    proc = subprocess.run([str(Path(sys.executable).parent / "config-manager"), "--oneshot", "--node-name=n1",
                           f"--config-file-srcdir={src}", f"--config-file-dst={tmp_path / 'config.yaml'}",
                           f"--kubeconfig={kubeconfig}", "--log-format=json"],
                          capture_output=True, text=True, timeout=60, check=False, env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 1
    assert "error reading node n1" in proc.stderr and "Traceback" not in proc.stderr


def test_sidecar_follows_label_changes_and_survives_410(tmp_path: Path, apiserver: FakeApiServer) -> None:
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    put_node(apiserver, None)
    proc = hup_child(tmp_path, "nvidia-device-plugin")
    s = settings(tmp_path, kubeconfig, SEND_SIGNAL="true", SIGNAL="1", PROCESS_TO_SIGNAL="nvidia-device-plugin")
    manager = ConfigManager(s, connect(kubeconfig, "config-manager"))
    thread = threading.Thread(target=manager.watch, kwargs={"stop_after": 8.0}, daemon=True)
    thread.start()
    marker = tmp_path / "got-hup"

    def wait_for(target: str) -> None:
        deadline = time.monotonic() + 6
        while os.path.realpath(s.dst) != os.path.realpath(target) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.readlink(s.dst) == target

    try:
        wait_for(os.path.join(s.srcdir, "default"))  # no label: the `named` fallback
        assert got_hup(marker)  # the first selection is a change too: the main process reloads
        marker.unlink()
        put_node(apiserver, "mig-mixed")
        wait_for(os.path.join(s.srcdir, "mig-mixed"))
        assert got_hup(marker)
        marker.unlink()
        put_node(apiserver, "typo-config")  # unknown: keep the current config, no signal
        time.sleep(0.3)
        assert os.readlink(s.dst) == os.path.join(s.srcdir, "mig-mixed") and not marker.exists()
        # Expire the watch's resourceVersion: the re-opened watch gets 410 Gone and the node is read again.
        gets_before = len([r for r in apiserver.requests("GET") if r.path == NODE])
        apiserver.compact()
        put_node(apiserver, "default")
        wait_for(os.path.join(s.srcdir, "default"))
        assert len([r for r in apiserver.requests("GET") if r.path == NODE]) == gets_before + 1
    finally:
        proc.kill()
        proc.wait()
        thread.join(10)


def test_a_server_that_ends_every_watch_at_once_gets_one_watch_a_second_then_fewer(tmp_path: Path,
                                                                                   apiserver: FakeApiServer) -> None:
    """Issue 20.1: before, ~775 node watches a second; now the one watch loop backs off a watch that ends
    too soon, and a stop ends the loop at once."""
    kubeconfig = apiserver.kubeconfig(str(tmp_path / "kubeconfig"))
    put_node(apiserver, "mig-mixed")
    apiserver.end_watches_at_once()
    kube = connect(kubeconfig, "config-manager")
    manager = ConfigManager(settings(tmp_path, kubeconfig), kube)
    stopping = threading.Event()
    thread = threading.Thread(target=manager.watch, args=(stopping,), daemon=True)
    thread.start()
    time.sleep(4.0)
    stopped = time.monotonic()
    stopping.set()
    kube.cancel()
    thread.join(2)
    assert not thread.is_alive() and time.monotonic() - stopped < 1.0
    watches = apiserver.watches()
    gaps = [b.at - a.at for a, b in itertools.pairwise(watches)]
    assert 2 <= len(watches) <= 4, gaps  # at 0, ~1, ~2.5 and maybe ~5 s
    assert gaps[0] >= 0.45 and gaps == sorted(gaps)
    assert len(apiserver.requests()) == len(watches) + 1  # and the one read of the node at start
    assert os.readlink(manager.s.dst).endswith("mig-mixed")
