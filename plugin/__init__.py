"""NVIDIA device plugin for the kubelet, on the same device model as GFD."""
