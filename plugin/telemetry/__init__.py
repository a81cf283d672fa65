"""GPU telemetry for Prometheus under dcgm-exporter's names, attributed to pods.

`podresources` asks the kubelet which container holds which device, `snapshot` turns samples into metric
families (pure), `collector` samples on its own interval and keeps the last snapshot for scrapes, `cli` is
the standalone `gpu-metrics-exporter`. The device plugin runs the same collector with `--gpu-metrics-address`.
"""
