"""The documented metric list and the example Grafana dashboard match what the hub exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
