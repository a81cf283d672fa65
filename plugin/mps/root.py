"""Where MPS keeps its files (upstream cmd/mps-control-daemon/mps/root.go), under a root that is the host's
`mps.root` (default /run/nvidia/mps) mounted at /mps in both containers:
`<root>/<name>/{pipe,log,.started}` per daemon (`<name>`: the device plugin's resource, or a GPU's UUID),
`<root>/shm` and `<root>/.ready`."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass

from gfd.config.errors import ConfigError, short
from plugin.mps import MpsError

CONTAINER_ROOT = "/mps"
ACCEPTED = "an existing directory this program can write, by absolute path"
_KINDS = {stat.S_IFREG: "a regular file", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


@dataclass(frozen=True)
class MpsRoot:
    path: str

    def pipe_dir(self, name: str) -> str:
        return os.path.join(self.path, name, "pipe")

    def log_dir(self, name: str) -> str:
        return os.path.join(self.path, name, "log")

    def started(self, name: str) -> str:
        """Written once the daemon runs with its limits set: what the plugin waits for."""
        return os.path.join(self.path, name, ".started")

    @property
    def shm(self) -> str:
        return os.path.join(self.path, "shm")

    @property
    def ready(self) -> str:
        """Written once every resource's daemon has started."""
        return os.path.join(self.path, ".ready")


def unusable(path: str) -> str | None:
    """Why MPS cannot keep its files under `path`, or None. Writing is tried (a probe file, removed again):
    only that answers for a read-only mount, a full disk or a security module alike."""
    if not path:
        return "empty (it would be the current directory)"
    if not os.path.isabs(path):
        return "not an absolute path (it would be relative to the current directory)"
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return e.strerror or str(e)
    if not stat.S_ISDIR(mode):
        return f"not a directory ({_KINDS.get(stat.S_IFMT(mode), 'of an unknown type')})"
    try:
        fd, probe = tempfile.mkstemp(prefix=".mps-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"not writable: {e.strerror or e}"
    return None


def checked_root(path: str, option: str) -> MpsRoot:
    """The root named by the flag `--<option>`, after `unusable`: a ConfigError naming the option and the
    problem, before anything (a GPU's compute mode included) is touched."""
    problem = unusable(path)
    if problem is not None:
        raise ConfigError("unable to validate flags", option, f"{short(path)}: {problem}", ACCEPTED)
    return MpsRoot(path)


def mark(path: str) -> None:
    """Create the empty marker file `path` (`.started`, `.ready`) by renaming a new file over it: whatever
    was there (a FIFO, a link) is replaced, never opened. MpsError when that cannot be done."""
    directory = os.path.dirname(path)
    try:
        fd, temporary = tempfile.mkstemp(prefix=".mark-", dir=directory)
        os.close(fd)
    except OSError as e:
        raise MpsError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        os.replace(temporary, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise MpsError(f"cannot write {path}: {e.strerror or e}") from e


def unmark(path: str) -> str | None:
    """Remove the marker `path` if it is there; None, or why it could not be removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot remove {path}: {e.strerror or e}"
    return None
