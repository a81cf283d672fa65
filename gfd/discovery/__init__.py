"""The only code that talks to NVML and sysfs: it returns a frozen DeviceModel."""
