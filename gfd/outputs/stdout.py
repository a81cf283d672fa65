"""Labels to standard output, in the feature-file format."""

from __future__ import annotations

import sys

from gfd.outputs import OutputError
from gfd.outputs.format import render


class Stdout:
    def write(self, labels: dict[str, str]) -> None:
        try:
            sys.stdout.buffer.write(render(labels))
            sys.stdout.flush()
        except OSError as e:  # a full device, a closed pipe
            raise OutputError(f"error writing labels to standard output: {e.strerror or e}") from None

    def needs_resync(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing runs in the background."""

    def remove(self) -> None:
        """Nothing to clean up: what went to stdout stays there."""
