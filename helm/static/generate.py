"""Render the static manifests (for users without Helm) from the chart, so they cannot drift from it.

Run: python helm/static/generate.py   (a test fails when the committed files differ from a fresh render)
"""

from __future__ import annotations

import os
import sys

import helm_python
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.dirname(HERE)

# file name -> (namespace, release name, values)
MANIFESTS: dict[str, tuple[str, str, dict[str, object]]] = {
    "gpu-feature-discovery.yaml": (
        "gpu-feature-discovery", "gfd",
        {"gfd": {"enabled": True}, "devicePlugin": {"enabled": False}, "nfd": {"enabled": False}},
    ),
    "nvidia-device-plugin.yaml": ("nvidia-device-plugin", "nvdp", {}),
}
HEADER = ("# Generated from helm/ by helm/static/generate.py with values {values}. Do not edit.\n"
          "# Needs NFD (or the node label nvidia.com/gpu.present=true) for the node affinity to match.\n")


def render(namespace: str, release: str, values: dict[str, object]) -> str:
    chart = helm_python.Chart.load(CHART)
    rendered = chart.render(values, name=release, namespace=namespace)
    docs: list[dict[str, object]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}]
    for path in sorted(rendered):
        docs += [d for d in yaml.safe_load_all(rendered[path]) if d]
    for doc in docs:
        # Helm-specific labels mean nothing without a release.
        labels = doc.get("metadata", {}).get("labels", {})  # type: ignore[union-attr]
        for key in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
            labels.pop(key, None)
    return HEADER.format(values=values or "{}") + yaml.safe_dump_all(docs, sort_keys=False)


def main() -> int:
    for name, (namespace, release, values) in MANIFESTS.items():
        with open(os.path.join(HERE, name), "w") as f:
            f.write(render(namespace, release, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
