"""MPS sharing: the control daemon program (`mps-control-daemon`) and what the plugin checks of it.

`root` is the directory layout both share, `control` speaks to `nvidia-cuda-mps-control`, `daemon` runs one
MPS control daemon per resource, `shm` is the `mount-shm` init step, `readiness` is the plugin's side.
"""


class MpsError(Exception):
    """An MPS daemon cannot be started or reached; the message is one line."""
