"""Reading the hub's ``GET /metrics`` in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.hub.conftest import HubParts

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(hub: HubParts) -> Samples:
    """Every sample of ``GET /metrics``: (sample name, sorted labels) -> value."""
    r = hub.client.get("/metrics", headers=hub.operator_token("viewer"))
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
