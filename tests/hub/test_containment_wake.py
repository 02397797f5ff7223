"""A containment decided outside any API request reaches the broker ACL at once, not at the next tick."""

from __future__ import annotations

import time
from pathlib import Path

from iotguard.detection import Alert, Severity
from iotguard.hub.compose import Maintenance
from tests.hub.conftest import make_hub


def test_hub_signal_quarantine_reaches_the_broker_acl_without_waiting_for_the_tick(tmp_path: Path) -> None:
    broker = tmp_path / "broker"
    broker.mkdir()
    hub = make_hub(tmp_path, mosquitto_dir=str(broker))
    try:
        for d in ("dev-0", "dev-1"):
            hub.agent(d)
        hub.deliver()
        acl = broker / "acl"
        grant = "topic write iotguard/default/dev-0/telemetry"
        assert grant in acl.read_text()
        maintenance = Maintenance(hub.services, interval_s=120.0, worker="test-maintenance")
        hub.services.detection.after_containment = maintenance.wake
        maintenance.start()
        try:
            now = time.time()
            # What HubSignalsService / ingest do: no HTTP request, so no middleware drains the outbox.
            hub.services.detection.raise_alerts([Alert.create("dev-0", "attestation_failed", 1.0, Severity.CRITICAL,
                                                              (now, now), {"tier": "contraindicated"})])
            deadline = time.monotonic() + 10.0  # the tick would come only after 120 s
            while grant in acl.read_text() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert grant not in acl.read_text()
            assert "topic write iotguard/default/dev-1/telemetry" in acl.read_text()  # the other keeps its grant
        finally:
            maintenance.stop()
    finally:
        hub.store.engine.dispose()
