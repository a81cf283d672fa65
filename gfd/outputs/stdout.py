"""Labels to standard output, in the feature-file format."""

from __future__ import annotations

import sys

from gfd.outputs.format import render


class Stdout:
    def write(self, labels: dict[str, str]) -> None:
        sys.stdout.buffer.write(render(labels))
        sys.stdout.flush()

    def needs_resync(self) -> bool:
        return False

    def remove(self) -> None:
        """Nothing to clean up: what went to stdout stays there."""
