"""The end-to-end tier (tests/e2e/): the chart's pods on a real API server, NFD master and kubelet.

It runs in private network and mount namespaces (the kubelet needs a non-loopback node IP and its
fixed device-plugin directory; the pod runner bind-mounts volumes), so it is a pytest session of its
own, started here under `unshare`; its result is this test's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.requirements import missing, require_commands, require_root, require_shared

ROOT = Path(__file__).resolve().parent.parent
# What ../shared/k8s's `cluster` and `node` run (their READMEs), and the namespaces this test makes.
PROGRAMS = ("unshare", "ip", "etcd", "openssl", "curl", "xz", "runc", "gcc", "strip", "busybox", "findmnt",
            "mountpoint")
CNI_BRIDGE = ("/usr/lib/cni/bridge", "/opt/cni/bin/bridge")


def test_end_to_end_tier_on_a_real_control_plane_and_kubelet() -> None:
    require_root("a real kubelet and private network and mount namespaces")
    require_shared("k8s", "cluster", "node")
    require_commands(*PROGRAMS)
    if not any(os.access(p, os.X_OK) for p in CNI_BRIDGE):
        missing(f"needs the CNI bridge plugin ({' or '.join(CNI_BRIDGE)}; Debian package containernetworking-plugins)",
                "apt-get install containernetworking-plugins, or run .ci/run (it installs it)")
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "--fork", sys.executable, "-m", "pytest", "tests/e2e",
         "-p", "no:cacheprovider", "-x"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "GFD_E2E_INSIDE": "1"})
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert " passed" in proc.stdout.splitlines()[-1] and "skipped" not in proc.stdout.splitlines()[-1]
