"""The Containerfile, checked statically (no container engine runs here)."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import helm_python
import yaml

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Containerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def test_multi_stage_with_a_slim_final_stage() -> None:
    build, final = stages()
    assert build[0][1].endswith("AS build")
    assert any(k == "ARG" and rest.startswith("PYTHON_IMAGE=") and "slim" in rest for k, rest in instructions())
    assert all(rest.split()[0] == "${PYTHON_IMAGE}" for k, rest in instructions() if k == "FROM")
    final_text = " ".join(rest for _, rest in final)
    assert ("COPY", "--from=build /opt/gfd /opt/gfd") in final
    assert not any(k == "RUN" for k, _ in final), "the final stage installs nothing"
    for forbidden in ("gcc", "build-essential", "apt-get", "pip install", "/root/.cache"):
        assert forbidden not in final_text
    build_run = " ".join(rest for k, rest in build if k == "RUN")
    assert "--no-cache-dir" in build_run and "pip uninstall --yes pip setuptools" in build_run


def test_user_entrypoint_labels_and_env() -> None:
    final = stages()[-1]
    keywords = dict(final)
    assert keywords["USER"] == "0:0"  # documented: host directories and NVIDIA device nodes are root-owned
    assert shlex.split(keywords["ENTRYPOINT"].strip("[]").replace(",", " ")) == ["nvidia-device-plugin"]
    labels = " ".join(rest for k, rest in final if k == "LABEL")
    for key in ("title", "description", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels
    env = " ".join(rest for k, rest in final if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    assert not re.search(r"(?i)(password|token|secret|api_key)\s*=", env)


def test_the_image_provides_every_entry_point_the_chart_runs() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    scripts = {line.split("=")[0].strip() for line in parser["options.entry_points"]["console_scripts"].splitlines()
               if line.strip()}
    assert scripts == {"gpu-feature-discovery", "nvidia-device-plugin", "config-manager", "mps-control-daemon",
                       "gpu-metrics-exporter", "nvidia-dra-plugin"}
    rendered = helm_python.Chart.load(str(ROOT / "helm")).render(
        {"gfd": {"enabled": True}, "config": {"map": {"default": "version: v1\n"}}}, name="nvdp", namespace="ns")
    pods = [d["spec"]["template"]["spec"] for text in rendered.values() for d in yaml.safe_load_all(text)
            if d and d["kind"] == "DaemonSet"]
    commands = {c["command"][0] for pod in pods for c in pod["containers"] + pod.get("initContainers", [])}
    assert commands <= scripts  # every workload runs a command the image has
    # ... and every program is deployed, but the standalone exporter (for nodes with another device plugin;
    # with this chart's plugin, devicePlugin.gpuMetrics serves the same from the plugin's pod) and the DRA
    # driver (the chart's dra.enabled mode, not rendered here).
    assert scripts - commands == {"gpu-metrics-exporter", "nvidia-dra-plugin"}
    copied = {rest.split()[0] for k, rest in stages()[0] if k == "COPY"}
    assert {"gfd", "plugin"} <= copied


def test_containerignore_keeps_the_context_small_and_clean() -> None:
    ignored = set((ROOT / ".containerignore").read_text().split())
    assert {".git", ".venv", "tests", "**/__pycache__"} <= ignored
