"""The NFD `features.d` file, replaced atomically: a reader sees the old file or the new one."""

from __future__ import annotations

import contextlib
import os
import tempfile

import structlog

from gfd.outputs import OutputError
from gfd.outputs.format import render

log = structlog.get_logger("gfd.outputs")


def write_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
    """Temp file in the target's directory (same filesystem, so rename is atomic), fsync, rename.

    The temp name starts with `.`, which NFD's local source skips. On failure the old file is
    untouched and the temp file removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}", dir=directory)
    except OSError as e:
        raise OutputError(f"error atomically writing file '{path}': {e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"error atomically writing file '{path}': {e}") from None


class FeatureFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, labels: dict[str, str]) -> None:
        log.info("Writing labels to output file", path=self.path)
        write_atomically(self.path, render(labels))

    def needs_resync(self) -> bool:
        """Rewrite a file someone deleted, even if our labels did not change."""
        return not os.path.exists(self.path)

    def remove(self) -> None:
        """Upstream's exit cleanup: the legacy gfd-tmp directory and the file itself."""
        legacy = os.path.join(os.path.dirname(self.path), "gfd-tmp")
        for target in (legacy, self.path):
            try:
                if os.path.isdir(target):
                    for entry in os.scandir(target):
                        os.unlink(entry.path)
                    os.rmdir(target)
                elif target == self.path:
                    os.unlink(target)
            except OSError as e:
                log.warning("Error removing output file", path=target, error=str(e))
