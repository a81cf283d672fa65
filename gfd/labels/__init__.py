"""Labelers: pure functions from (DeviceModel, Config) to `nvidia.com/*` labels."""

Labels = dict[str, str]
