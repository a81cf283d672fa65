"""config-manager: picks the node's named config (label nvidia.com/device-plugin.config) for GFD and the plugin."""
