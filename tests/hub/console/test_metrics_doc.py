"""The documented metric list, the example Grafana dashboard and the alerting rules match what the hub exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.hub.console.conftest import ConsoleHub

ROOT = Path(__file__).resolve().parents[3]


def _documented() -> set[str]:
    text = (ROOT / "docs" / "console.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(iotguard_[a-z_]+)`", section, flags=re.M))


def test_every_exported_metric_is_documented_and_every_documented_one_is_exported(console: ConsoleHub) -> None:
    from iotguard.detection import Alert, Severity

    console.hub.agent("dev-1")
    console.hub.services.detection.raise_alerts([Alert.create("dev-1", "scan_fanout", 1.0, Severity.LOW,
                                                              (1_767_225_600.0, 1_767_225_615.0), {})])
    headers = console.hub.operator_token("viewer")
    console.hub.client.get("/v1/nothing-here", headers=headers)  # one error response for the API counter
    text = console.hub.client.get("/metrics", headers=headers).text
    exported = {m for m in re.findall(r"^# TYPE (iotguard_[a-z_]+)", text, flags=re.M)}
    # Counters are documented by their sample name (``_total``).
    exported = {m + "_total" if f"{m}_total" in text else m for m in exported}
    assert exported == _documented()


def test_grafana_dashboard_queries_only_documented_metrics() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana" / "iotguard-hub.json").read_text())
    names = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"iotguard_[a-z_]+", target["expr"])}
    assert names == _documented()


def test_alerting_rules_use_only_documented_metrics_and_label_values_the_hub_uses() -> None:
    from iotguard.detection import Severity
    from iotguard.hub.ingest import REASON_CODES

    rules = yaml.safe_load((ROOT / "docs" / "grafana" / "iotguard-alerts.yml").read_text())["groups"][0]["rules"]
    assert rules and len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
        names = set(re.findall(r"iotguard_[a-z_]+", rule["expr"]))
        assert names and names <= _documented(), (rule["alert"], names - _documented())
        for value in re.findall(r'reason="([a-z_]+)"', rule["expr"]):
            assert value in REASON_CODES, value  # a reason code ingest rejects with
        for value in re.findall(r'severity=~"([a-z|]+)"', rule["expr"]):
            assert set(value.split("|")) <= {s.name.lower() for s in Severity}, value


def test_ingest_reason_codes_are_the_ones_the_wire_document_lists() -> None:
    from iotguard.hub.ingest import REASON_CODES

    text = (ROOT / "docs" / "wire.md").read_text()
    section = text.split("## 8. Rejection reason codes", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)) == set(REASON_CODES)
