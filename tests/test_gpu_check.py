"""The real-GPU check of memory shares (tests/gpu/mps_limits.py) kept runnable on machines without a GPU: its dry
run drives the DRA driver's MPS path on the simulator and the MPS stand-in, and its clients, without libcuda.so.1,
report that they could not load it (so the check fails, as it must without a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.mps.standin import path_with_stand_in

ROOT = __file__.rsplit("/tests/", 1)[0]


def test_the_dry_run_starts_one_daemon_gives_each_client_its_limit_and_gives_the_gpu_back() -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.gpu.mps_limits", "--simulate", "dgx-h100"], cwd=ROOT,
                          env={"PATH": path_with_stand_in()}, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert [(c["limit_mib"], c["limit"]) for c in report["clients"]] == [(1024, "0=1024M"), (2048, "0=2048M")]
    assert all("libcuda.so.1" in c["error"] for c in report["clients"])
    assert report["held"] == {"allocations": False, "exclusive_while_shared": True, "default_after": True}
    assert "Cmd:set_default_device_pinned_mem_limit 0 81559M" in proc.stderr  # the daemon's default: the whole GPU
