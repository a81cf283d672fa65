"""The NFD `features.d` file, replaced atomically: a reader sees the old file or the new one."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

import structlog

from gfd.outputs import OutputError
from gfd.outputs.format import render

log = structlog.get_logger("gfd.outputs")


def temp_prefix(path: str) -> str:
    """Temp files start with `.`, which NFD's local source skips."""
    return f".{os.path.basename(path)}.tmp-"


def write_atomically(path: str, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Temp file in the target's directory (same filesystem, so rename is atomic), fsync, rename. Without
    `durable` no fsync: still atomic for any reader and across a process crash (the page cache holds the
    new file), not across a power loss; for state that a reboot invalidates anyway.

    A missing directory is created again (as the hostPath's DirectoryOrCreate would after a restart);
    only a regular file is ever replaced (never a device node such as /dev/full, a FIFO or a directory).
    On failure the old file is untouched and the temp file removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if stat.S_IFMT(os.lstat(path).st_mode) != stat.S_IFREG:
            raise OutputError(f"error writing file '{path}': it exists and is not a regular file "
                              "(accepted: a regular file or a new path)")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise OutputError(f"error atomically writing file '{path}': {e}") from e
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=directory)
    except OSError as e:
        raise OutputError(f"error atomically writing file '{path}': {e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"error atomically writing file '{path}': {e}") from e


class FeatureFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.cleaned = False

    def write(self, labels: dict[str, str]) -> None:
        if not self.cleaned:  # what an earlier process's interrupted write left, once per run
            self.clean_temp_files()
            self.cleaned = True
        log.info("Writing labels to output file", path=self.path)
        write_atomically(self.path, render(labels))

    def needs_resync(self) -> bool:
        """Rewrite a file someone deleted, even if our labels did not change."""
        return not os.path.exists(self.path)

    def clean_temp_files(self) -> None:
        """Temp files a write interrupted by the process's end left behind (at start and at exit)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        prefix = temp_prefix(self.path)
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                if entry.name.startswith(prefix):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def close(self) -> None:
        """A write interrupted by the stop leaves its temp file: removed here."""
        self.clean_temp_files()

    def remove(self) -> None:
        """Upstream's exit cleanup: the legacy gfd-tmp directory and the file itself."""
        log.info("removing the feature file on exit (upstream behaviour; --keep-output-on-exit keeps it)",
                 path=self.path)
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
