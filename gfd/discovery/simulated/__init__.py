"""Simulated NVML under the real pynvml binding, driven by machine profiles (YAML)."""
