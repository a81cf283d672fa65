"""Where MPS keeps its files (upstream cmd/mps-control-daemon/mps/root.go), under a root that is the host's
`mps.root` (default /run/nvidia/mps) mounted at /mps in both containers:
`<root>/<resource>/{pipe,log,.started}`, `<root>/shm` and `<root>/.ready`."""

from __future__ import annotations

import os
from dataclasses import dataclass

CONTAINER_ROOT = "/mps"


@dataclass(frozen=True)
class MpsRoot:
    path: str

    def pipe_dir(self, resource: str) -> str:
        return os.path.join(self.path, resource, "pipe")

    def log_dir(self, resource: str) -> str:
        return os.path.join(self.path, resource, "log")

    def started(self, resource: str) -> str:
        """Written once the resource's daemon runs with its limits set: what the plugin waits for."""
        return os.path.join(self.path, resource, ".started")

    @property
    def shm(self) -> str:
        return os.path.join(self.path, "shm")

    @property
    def ready(self) -> str:
        """Written once every resource's daemon has started."""
        return os.path.join(self.path, ".ready")
