"""Write the specs where the container runtime reads them, and remove the ones this start no longer writes."""

from __future__ import annotations

import os

import structlog

from gfd.model import DeviceModel
from gfd.outputs import OutputError
from gfd.outputs.featurefile import write_atomically
from plugin.cdi import CdiError
from plugin.cdi.generate import build_specs
from plugin.cdi.roots import Roots
from plugin.cdi.spec import VENDOR, Spec
from plugin.config import PluginConfig

log = structlog.get_logger("plugin")
SPEC_MODE = 0o644  # the runtime (often another user) must read them; only the plugin writes them


def publish(model: DeviceModel, config: PluginConfig, imex_channels: tuple[int, ...],
            mig_cap_minors: dict[str, int], host_root: str = "/") -> frozenset[str]:
    """Build and write this start's specs; CdiError (fatal at start, as upstream) when one cannot be."""
    for flag in config.cdi_feature_flags:
        log.warning("CDI feature flag not implemented; ignored", flag=flag)
    roots = Roots.for_config(config, host_root)
    return write_specs(build_specs(model, config, imex_channels, mig_cap_minors, roots), config.cdi_spec_dir)


def write_specs(specs: list[Spec], spec_dir: str) -> frozenset[str]:
    """Each spec replaced atomically (a runtime never reads half a file); our vendor's other spec files,
    left by an earlier start with other settings, are removed. Returns the classes written."""
    written = set()
    for spec in specs:
        path = os.path.join(spec_dir, spec.file_name)
        try:
            write_atomically(path, spec.to_json(), SPEC_MODE)
        except OutputError as e:
            raise CdiError(f"failed to save CDI spec: {e}") from e
        log.info("CDI spec written", path=path, devices=len(spec.devices))
        written.add(spec.file_name)
    for name in _ours(spec_dir) - written:
        try:
            os.unlink(os.path.join(spec_dir, name))
            log.info("stale CDI spec removed", path=os.path.join(spec_dir, name))
        except OSError as e:
            log.warning("cannot remove a stale CDI spec", path=os.path.join(spec_dir, name), error=e.strerror)
    return frozenset(s.cdi_class for s in specs)


def _ours(spec_dir: str) -> set[str]:
    try:
        names = os.listdir(spec_dir)
    except OSError:
        return set()
    return {n for n in names if n.startswith(f"{VENDOR}-") and n.endswith(".json")}
