"""Labels to standard output, in the feature-file format."""

from __future__ import annotations

import os
import sys

from gfd.outputs import OutputError
from gfd.outputs.format import render


class Stdout:
    def write(self, labels: dict[str, str]) -> None:
        try:
            sys.stdout.buffer.write(render(labels))
            sys.stdout.flush()
        except OSError as e:  # a full device, a closed pipe
            # What is still buffered would fail again at exit (exit status 120 and a traceback-like
            # message): standard output goes to /dev/null from here on.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            raise OutputError(f"error writing labels to standard output: {e.strerror or e}") from e

    def needs_resync(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing runs in the background."""

    def remove(self) -> None:
        """Nothing to clean up: what went to stdout stays there."""
