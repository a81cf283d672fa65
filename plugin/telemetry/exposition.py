"""The Prometheus text format (0.0.4) of metric families, written as dcgm-exporter writes it: a counter's
`# HELP`/`# TYPE` and its samples under one name, without `_total`.

prometheus_client's writer renames every counter family to `<name>_total` in its HELP and TYPE lines (its
OpenMetrics model), while dcgm-exporter's counters (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, ...) have no such
suffix; its users' queries and alerts need the bare names, and Prometheus reads a TYPE line only for the
samples of that very name. So the few lines below write the format themselves; label values and HELP are
escaped as the format says, values are formatted by prometheus_client.
"""

from __future__ import annotations

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString


def render(families: list[Metric]) -> bytes:
    out: list[str] = []
    rendered: dict[int, str] = {}  # id() of a labels dict -> its text: the families share each device's labels
    for family in families:
        out.append(f"# HELP {family.name} {_help(family.documentation)}\n# TYPE {family.name} {family.type}\n")
        for sample in family.samples:
            labels = rendered.get(id(sample.labels))
            if labels is None:
                labels = rendered[id(sample.labels)] = ",".join(
                    f'{name}="{_label_value(value)}"' for name, value in sample.labels.items())
            out.append(f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}\n")  # type: ignore[no-untyped-call]
    return "".join(out).encode()


def _help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _label_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
