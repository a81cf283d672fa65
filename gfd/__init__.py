"""GPU feature discovery for Kubernetes, label-compatible with NVIDIA GFD v0.20.0."""

__version__ = "0.1.0"
