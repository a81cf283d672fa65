"""GPU feature discovery for Kubernetes, label-compatible with NVIDIA GFD v0.20.0."""

__version__ = "0.1.0"
# The NVIDIA/k8s-device-plugin release (GFD, the device plugin, config-manager, the MPS daemon) whose flags,
# labels and behaviour ours follow; `--version` prints it beside ours.
UPSTREAM_VERSION = "v0.20.0"
