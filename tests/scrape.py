"""A /metrics answer read the way Prometheus reads it, strictly: prometheus_client's own text parser, and a
family it cannot type (`unknown`: samples whose name no `# TYPE` line declares) fails the test."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import http_get


class Scrape:
    """Declared types and HELP by family, and every sample under the name it has in the text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.helps: dict[str, str] = {}
        self.samples: list[Any] = []
        for family in text_string_to_metric_families(text):
            assert family.type != "unknown", f"{family.name}: samples without a # TYPE line of their own name"
            assert family.name not in self.types, f"{family.name}: declared twice"
            self.types[family.name], self.helps[family.name] = family.type, family.documentation
            for sample in family.samples:
                # The parser names a counter's samples <name>_total (its OpenMetrics model); in the text they
                # carry the family's own name, as dcgm-exporter writes them.
                name = sample.name.removesuffix("_total") if family.type == "counter" else sample.name
                assert name == family.name, f"{sample.name} in family {family.name}"
                self.samples.append(sample._replace(name=name))
        for line in text.splitlines():  # and in the text itself, each sample under its family's very name
            if line and not line.startswith("#"):
                assert line.split("{", 1)[0].split(" ", 1)[0] in self.types, line

    def series(self, name: str, **labels: str) -> list[Any]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        (sample,) = self.series(name, **labels)
        return float(sample.value)


def scrape(port: int) -> Scrape:
    answer = http_get(f"http://127.0.0.1:{port}/metrics")
    assert answer is not None and answer[0] == 200
    return Scrape(answer[1])
