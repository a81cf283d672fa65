"""The command line as users type it: upstream spellings, --simulate, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gfd.cli import main
from tests.requirements import require_command

ROOT = Path(__file__).resolve().parent.parent


def test_upstream_acceptance_spelling_writes_the_file(tmp_path: Path, write_yaml: Any, capsys: Any) -> None:
    cfg = write_yaml({"version": "v1", "sharing": {"timeSlicing": {"resources": [{"name": "gpu", "replicas": 2}]}}})
    out = tmp_path / "labels"
    code = main(["--oneshot", "--no-timestamp", "--mig-strategy=mixed", f"--output-file={out}",
                 f"--config-file={cfg}", "--simulate=dgx-a100"], {})
    assert code == 0
    labels = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB-SHARED"
    assert labels["nvidia.com/mig.strategy"] == "mixed"
    assert capsys.readouterr().out == ""


def test_simulate_from_env_and_list(capsys: Any) -> None:
    assert main(["--oneshot", "-o", "-"], {"GFD_SIMULATE": "l4"}) == 0
    assert "nvidia.com/gpu.product=NVIDIA-L4" in capsys.readouterr().out
    assert main(["--simulate", "list"], {}) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert {"dgx-a100", "a100-mig-single", "a100-80gb-mig-mixed", "dgx-h100", "t4", "l4", "gh200",
            "heterogeneous", "no-gpus", "odd-names", "no-library"} <= set(names)


def test_unknown_profile_is_one_clear_line(capsys: Any) -> None:
    assert main(["--oneshot", "-o", "-", "--simulate", "dgx-z9000"], {}) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1
    assert "flag --simulate: simulate: unknown profile 'dgx-z9000' (accepted: " in errors[0]
    assert "dgx-a100" in errors[0]


def test_bad_config_exits_1_with_one_line_naming_file_and_field(write_yaml: Any, capsys: Any) -> None:
    cfg = write_yaml({"flags": {"migStrategy": "bogus"}})
    assert main(["--oneshot", "-o", "-", "--config-file", cfg, "--simulate", "t4", "--log-format=json"], {}) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert f"config file {cfg}: flags.migStrategy: invalid value" in lines[0]
    assert "accepted: none, single, mixed" in lines[0]


def test_bad_flag_exits_1(capsys: Any) -> None:
    assert main(["--sleep-interval=60"], {}) == 1
    assert 'time: missing unit in duration "60"' in capsys.readouterr().err


def test_unimplemented_discovery_backends_are_refused_clearly(capsys: Any) -> None:
    assert main(["--oneshot", "-o", "-", "--device-discovery-strategy=tegra", "--simulate=t4"], {}) == 1
    assert "'tegra' is not implemented yet" in capsys.readouterr().err


def test_file_write_error_exits_1_without_traceback(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "a-file").write_text("")
    assert main(["--oneshot", "-o", str(tmp_path / "a-file" / "gfd"), "--simulate=t4"], {}) == 1
    err = capsys.readouterr().err
    assert "error atomically writing file" in err and "Traceback" not in err


def test_a_missing_output_directory_is_created(tmp_path: Path) -> None:
    assert main(["--oneshot", "-o", str(tmp_path / "features.d" / "gfd"), "--simulate=t4"], {}) == 0
    assert "nvidia.com/gpu.count=4" in (tmp_path / "features.d" / "gfd").read_text()


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gfd", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env}, check=False)


def test_without_simulate_the_real_library_search_is_used(tmp_path: Path) -> None:
    """No NVML here: pynvml's own dlopen of libnvidia-ml.so.1 fails, as on a node without a driver. Upstream's
    line stays whole for scripts; the cause and the way out follow it on the same line."""
    proc = _run(["--oneshot", "-o", "-", f"--driver-root-ctr-path={tmp_path}"], {"LD_LIBRARY_PATH": str(tmp_path)})
    assert proc.returncode == 1
    error = _one_error_line(proc.stderr)
    assert error.startswith("failed to create resource manager: unsupported strategy auto (ERROR_LIBRARY_NOT_FOUND: "
                            f"no libnvidia-ml.so.1 under the driver root {tmp_path} (--driver-root-ctr-path) or on "
                            "the library search path: no NVIDIA driver here")
    assert "--simulate list" in error


def _one_error_line(stderr: str) -> str:
    import json

    errors = [event["event"] for event in map(json.loads, stderr.splitlines()) if event["level"] == "error"]
    assert len(errors) == 1, stderr
    return str(errors[0])


def test_the_default_output_outside_a_cluster_names_the_ways_to_write_labels_without_one() -> None:
    for argv in (["--oneshot"], []):  # oneshot and daemon
        proc = _run([*argv, "--simulate=t4"], {})
        assert proc.returncode == 1
        error = _one_error_line(proc.stderr)
        assert error.startswith("failed to create clientsets: Service host/port is not set. (")  # upstream's line
        for way_out in ("--kubeconfig", "NODE_NAME", "-o FILE", "-o - (stdout)", "--use-node-feature-api=false"):
            assert way_out in error


def test_help_states_the_output_rule_the_program_follows(tmp_path: Path, capsys: Any) -> None:
    """--help says the NodeFeature API is on unless an output file is given without the flag, and `-` is stdout;
    the "Running with config" line of each case agrees with it."""
    import json

    with pytest.raises(SystemExit):
        main(["--help"], {})
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("--use-node-feature-api [BOOL], -use-node-feature-api [BOOL] use NFD NodeFeature API to publish labels "
            "(accepted: true, false; default: true, unless --output-file is given without this flag; "
            "--output-file=- always writes stdout;") in help_text
    assert "'True'" not in help_text and "default: 'false';" in help_text  # booleans as Go spells them
    out = str(tmp_path / "labels")
    for argv, node_feature in ((["--oneshot", "--simulate=t4", "-o", out], False),
                               (["--oneshot", "--simulate=t4", "-o", out, "--use-node-feature-api"], True),
                               (["--oneshot", "--simulate=t4", "-o", "-", "--use-node-feature-api"], False),
                               (["--oneshot", "--simulate=t4", "--use-node-feature-api=false"], False)):
        main([*argv, "--log-format=json", "--kubeconfig=/nonexistent"], {})
        first = json.loads(capsys.readouterr().err.splitlines()[0])
        assert first["event"] == "Running with config" and first["useNodeFeatureAPI"] is node_feature, argv


def test_running_with_config_names_every_option(capsys: Any) -> None:
    import json

    from gfd.config.model import GFD_OPTIONS

    assert main(["--oneshot", "-o", "-", "--simulate=t4", "--log-format=json", "--sleep-interval=90s"], {}) == 0
    first = json.loads(capsys.readouterr().err.splitlines()[0])
    assert {o.config_name for o in GFD_OPTIONS} | {"sharingStrategy"} <= set(first)
    assert (first["migStrategy"], first["sleepInterval"], first["simulate"]) == ("none", "1m30s", "t4")


@pytest.mark.parametrize(("typed", "meant"), [("--oneshott", "--oneshot"), ("-mig-stratgy=mixed", "--mig-strategy"),
                                              ("--output-fle", "--output-file"), ("--verison", "--version"),
                                              ("--no-timestamps", "--no-timestamp")])
def test_a_mistyped_flag_gets_the_closest_declared_one(capsys: Any, typed: str, meant: str) -> None:
    assert main([typed], {}) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"gpu-feature-discovery: command line: flag provided but not defined: {typed.split('=')[0]}; "
                   f"did you mean {meant}? (accepted: see --help)")


def test_a_flag_like_no_other_gets_no_suggestion(capsys: Any) -> None:
    assert main(["--frobnicate"], {}) == 1
    assert capsys.readouterr().err.strip() == \
        "gpu-feature-discovery: command line: flag provided but not defined: --frobnicate (accepted: see --help)"


@pytest.mark.parametrize(("program", "upstream"), [("gpu-feature-discovery", "gpu-feature-discovery"),
                                                   ("nvidia-device-plugin", "nvidia-device-plugin"),
                                                   ("config-manager", "config-manager")])
def test_version_names_ours_and_the_upstream_release_it_follows(program: str, upstream: str) -> None:
    from gfd import UPSTREAM_VERSION, __version__

    for flag in ("--version", "-v"):
        proc = subprocess.run([str(Path(sys.executable).parent / program), flag], capture_output=True, text=True,
                              timeout=60, check=False, env={"PATH": os.environ["PATH"], "COLUMNS": "20"})
        assert proc.returncode == 0
        assert proc.stdout == \
            f"{program} {__version__} (follows NVIDIA {upstream} {UPSTREAM_VERSION} (NVIDIA/k8s-device-plugin))\n"
    assert UPSTREAM_VERSION == "v0.20.0"  # the release shared/reference/ describes


def test_a_drop_in_libnvidia_ml_on_the_library_path_is_loaded(tmp_path: Path) -> None:
    require_command("cc")  # builds the drop-in library
    lib = tmp_path / "libnvidia-ml.so.1"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(ROOT / "tests/data/dropin_nvml.c")], check=True)
    proc = _run(["--oneshot", "-o", "-", "--no-timestamp", "--machine-type-file="],
                {"LD_LIBRARY_PATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    labels = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert labels["nvidia.com/gpu.product"] == "Drop-in-GPU-test"
    assert labels["nvidia.com/cuda.driver-version.full"] == "999.1.2"
    assert labels["nvidia.com/cuda.runtime-version.full"] == "13.1"
    assert labels["nvidia.com/gpu.family"] == "hopper"
    assert labels["nvidia.com/gpu.machine"] == "unknown"
    assert labels["nvidia.com/mig.capable"] == "false"


def test_logs_are_json_when_not_a_tty(tmp_path: Path) -> None:
    import json

    proc = _run(["--oneshot", "-o", "-", "--simulate=t4"], {})
    assert proc.returncode == 0
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert events[0]["event"] == "Running with config" and events[0]["level"] == "info"


def test_oneshot_imports_no_heavy_client() -> None:
    """kubernetes, grpc and prometheus_client stay out of the oneshot path (startup time and RSS)."""
    code = ("import sys, gfd.cli; rc = gfd.cli.main(['--oneshot', '-o', '-', '--simulate=dgx-a100'], {}); "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'grpc', 'prometheus_client'}); "
            "print('HEAVY', heavy, rc, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
    assert "HEAVY [] 0" in proc.stderr, proc.stderr
