"""Every command the README shows runs as shown (on this GPU-less machine: simulated where it says so,
one clear line where it needs a GPU)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def blocks(language: str = "") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def usage_commands() -> list[str]:
    """The "Using it" block: one command per logical line, comments dropped."""
    block = next(b for b in blocks() if b.startswith("gpu-feature-discovery --oneshot"))
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


@pytest.mark.parametrize("command", usage_commands())
def test_usage_commands_run_as_shown(tmp_path: Path, command: str) -> None:
    (tmp_path / "cfg.yaml").write_text("version: v1\n")
    (tmp_path / "my-node.yaml").write_text(blocks("yaml")[0])  # the README's own profile example
    words = shlex.split(command)
    env = {"PATH": f"{BIN}:{os.environ['PATH']}"}
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    proc = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in proc.stderr
    if "simulate" in command.lower():
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout, "labels or the profile list on stdout"
    else:  # needs a GPU's NVML: on this machine, upstream's one line and exit 1
        assert proc.returncode == 1
        assert "unsupported strategy auto" in proc.stderr


def test_the_main_job_of_the_first_lines_runs() -> None:
    first = re.search(r"`python3 -m venv .venv && .venv/bin/pip install -q \. && \.venv/bin/(.*?)`", README)
    assert first is not None
    proc = subprocess.run([str(BIN / a) if i == 0 else a for i, a in enumerate(shlex.split(first.group(1)))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "nvidia.com/gpu.count=8" in proc.stdout


def test_the_plugin_example_runs_as_shown() -> None:
    match = re.search(r"`(nvidia-device-plugin --simulate=\S+ --kubelet-socket=(\S+))`", README)
    assert match is not None
    socket_dir = Path(match.group(2)).parent
    words = shlex.split(match.group(1))
    proc = subprocess.Popen([str(BIN / words[0]), *words[1:], "--log-format=json"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (socket_dir / "nvidia-gpu.sock").exists():  # serving, waiting for a kubelet
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in out


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    command = re.search(r"Run the tests:\n`(.*?)`", README)
    assert command is not None
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command.group(1) in ci_lines


def test_the_architecture_names_modules_that_exist() -> None:
    """Each module or folder the architecture section names is where it says (a rename must update it)."""
    section = README.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\b((?:gfd|plugin)/[\w/]*(?:\.py)?)", section))
    bare = {m for m in re.findall(r"\b(\w+\.py)\b", section)}
    assert len(named) >= 6 and len(bare) >= 15
    for path in named:
        assert (ROOT / path).exists(), path
    sources = {p.name for p in (ROOT / "gfd").rglob("*.py")} | {p.name for p in (ROOT / "plugin").rglob("*.py")}
    assert bare <= sources, bare - sources


# Node-wide labels under nvidia.com/gpu. that no resource labeler writes.
RESOURCE_FREE_GPU_KEYS = {"nvidia.com/gpu.machine", "nvidia.com/gpu.mode", "nvidia.com/gpu.clique"}


@pytest.mark.parametrize("memory_fault", [True, False])
def test_the_readmes_profile_mixes_its_two_models_as_upstream_does(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    memory_fault: bool) -> None:
    """Upstream (internal/lm/mig-strategy.go newGPULabelers, merged by internal/lm/list.go; reference
    gfd-labels.md §4): one label set per model, MIG-enabled models first, copied into one map key by key. The
    MIG-disabled T4 comes last, so its set wins; a key it lacks (its memory query failed, so no gpu.memory)
    keeps the MIG-enabled A100 80GB's value. Figures from the simulator's model files (T4: Tesla T4, 15360 MiB,
    compute 7.5; A100-SXM4-80GB: 81920 MiB)."""
    from gfd.cli import main

    profile = yaml.safe_load(blocks("yaml")[0])
    assert [g["model"] for g in profile["gpus"]] == ["A100-SXM4-80GB", "T4"] and profile["gpus"][0]["mig"]
    if not memory_fault:
        profile["faults"] = []
    path = tmp_path / "my-node.yaml"
    path.write_text(yaml.safe_dump(profile))
    assert main(["--oneshot", "-o", "-", "--no-timestamp", f"--simulate={path}", "--log-format=json"], {}) == 0
    captured = capsys.readouterr()
    labels = dict(line.split("=", 1) for line in captured.out.splitlines())
    resource = {k.removeprefix("nvidia.com/gpu."): v for k, v in labels.items()
                if k.startswith("nvidia.com/gpu.") and k not in RESOURCE_FREE_GPU_KEYS}
    assert resource == {"product": "Tesla-T4", "count": "1", "replicas": "1", "sharing-strategy": "none",
                        "family": "turing", "compute.major": "7", "compute.minor": "5",
                        "memory": "81920" if memory_fault else "15360"}
    warning = next(json.loads(line) for line in captured.err.splitlines() if "Multiple device types" in line)
    assert (warning["models"], warning["labelled"]) == (["NVIDIA A100-SXM4-80GB", "Tesla T4"], "Tesla T4")
    assert warning.get("from_other_models") == \
        ({"nvidia.com/gpu.memory": "NVIDIA A100-SXM4-80GB"} if memory_fault else None)


def test_contributing_names_modules_that_exist_and_the_architecture_shows_the_cross_cutting_ones() -> None:
    """CONTRIBUTING.md says which module to use (to start and stop, talk to the API, serve HTTP, raise
    errors): each module it names exists, and the README's architecture shows the same ones."""
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    named = set(re.findall(r"\b(?:gfd|plugin|tests)/[\w/]*\w(?:\.py|/)?(?![\w<*])", contributing))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing
    architecture = README.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    for module in ("gfd/lifecycle.py", "gfd/signals.py", "gfd/kube/", "gfd/kube/errors.py", "gfd/httpserver.py",
                   "gfd/discovery/errors.py"):
        assert module in named and module in architecture, module
