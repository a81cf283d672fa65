"""MPS sharing: the control daemon program (`mps-control-daemon`), the per-GPU daemons the DRA driver starts,
and what the plugin checks of them.

`root` is the directory layout (and its check), `control` speaks to `nvidia-cuda-mps-control` (bounded),
`daemon` runs one MPS control daemon for a set of GPUs (usable on its own), `replicas` is the device plugin's
daemon per resource, `shm` is the `mount-shm` init step, `readiness` is the plugin's side.
"""


class MpsError(Exception):
    """An MPS daemon cannot be started or reached; the message is one line."""
