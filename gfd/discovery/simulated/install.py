"""Put a simulated node under pynvml: its library object and its /sys tree."""

from __future__ import annotations

import atexit
import os
import tempfile
from dataclasses import dataclass

import pynvml

from gfd.discovery.simulated.library import SimulatedLibrary
from gfd.discovery.simulated.profiles import SimNode
from gfd.discovery.simulated.sysfs_tree import materialise


@dataclass
class Simulation:
    node: SimNode
    library: SimulatedLibrary
    host_root: str
    _tmp: tempfile.TemporaryDirectory[str]

    def close(self) -> None:
        atexit.unregister(self._tmp.cleanup)
        uninstall()
        self._tmp.cleanup()

    def set_library_present(self, present: bool) -> None:
        """Make the library (dis)appear, as when a driver container finishes installing."""
        self.node.library_present = present
        _set_library(self.library if present else _MissingLibrary())


def _set_library(library: object) -> None:
    # pynvml caches function pointers per name; a new library object needs a fresh cache.
    pynvml._nvmlGetFunctionPointer_cache.clear()
    pynvml.nvmlLib = library
    pynvml._nvmlLib_refcount = 0


def install(node: SimNode) -> Simulation:
    """Install `node` as pynvml's library. A node whose library is 'missing' makes nvmlInit fail
    with NVML_ERROR_LIBRARY_NOT_FOUND (pynvml's own path when CDLL cannot load the library)."""
    tmp = tempfile.TemporaryDirectory(prefix="gfd-sim-", dir=_memory_backed_dir())
    atexit.register(tmp.cleanup)  # every exit but SIGKILL: signals end the process through a normal exit
    materialise(node, tmp.name)
    library = SimulatedLibrary(node)
    sim = Simulation(node, library, tmp.name, tmp)
    sim.set_library_present(node.library_present)
    return sim


def _memory_backed_dir() -> str | None:
    """tmpfs when there is one: the tree is rebuilt per process and read every pass (10x faster than disk)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def uninstall() -> None:
    _set_library(None)


class _MissingLibrary:
    """A library that failed to load. pynvml left alone would try CDLL("libnvidia-ml.so.1"), which on
    a GPU host finds the real one; this makes every lookup fail as an absent library does."""

    def __getattr__(self, name: str) -> object:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
