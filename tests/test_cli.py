"""The command line as users type it: upstream spellings, --simulate, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    """No NVML here: pynvml's own dlopen of libnvidia-ml.so.1 fails, as on a node without a driver."""
    proc = _run(["--oneshot", "-o", "-"], {"LD_LIBRARY_PATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "failed to create resource manager: unsupported strategy auto" in proc.stderr


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
