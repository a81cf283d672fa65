"""The DRA driver gpu.nvidia.com: ResourceSlices from the device model, the kubelet DRA plugin, CDI per claim."""
