"""Reading what otpy.metrics exposes, as Prometheus would: over HTTP, parsed
by prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from helpers import DEADLINE

Scrape = dict[tuple[str, frozenset], float]  # (sample name, labels) -> value


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        assert response.status == 200
        text = response.read().decode()
    return parse(text)


def parse(text: str) -> Scrape:
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"a series twice: {key}"
            out[key] = sample.value
    return out


def value(figures: Scrape, name: str, default: float | None = None, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    if key not in figures:
        if default is not None:
            return default
        raise AssertionError(f"no {name}{labels} in the scrape: "
                             f"{sorted(k for k in figures if k[0] == name)}")
    return figures[key]


def series(figures: Scrape, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in figures.items() if n == name}
