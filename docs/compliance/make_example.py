"""Regenerate ``example-report.json``, ``example-report.html`` and ``example-report.pdf`` (ReportLab) from a demo fleet.

The fleet: eight agents enrolled through the in-process API (real keys, certificates and audit
entries), forty devices registered but not enrolled, one quarantined after an alert, one data
subject's consent, an end-of-support date for ``thermo-1`` and a published security contact.
The report is what ``iotguard compliance report`` prints for that hub.

Usage: ``.venv/bin/python docs/compliance/make_example.py``.
"""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from iotguard.agent import Agent
from iotguard.config import AgentConfig, HubConfig
from iotguard.detection import Alert, Severity
from iotguard.hub.api import create_app
from iotguard.hub.compliance import render_html, render_pdf, report
from iotguard.hub.compose import build_hub_services
from iotguard.hub.credentials import set_end_of_support

OUT = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="iotguard-compliance-") as tmp:
        cfg = HubConfig(data_dir=str(Path(tmp) / "hub"), security_contact="https://example.org/.well-known/security.txt")
        services = build_hub_services(cfg)
        drainer = services.drainer("example")
        client = TestClient(create_app(services, drain=drainer.drain))
        for i in range(8):
            device_id = f"thermo-{i:03d}"
            agent = Agent(AgentConfig(data_dir=str(Path(tmp) / "agents" / device_id), hub_url="http://testserver",
                                      suites=["chacha20-poly1305"]), device_id, http=client)
            agent.enroll(str(services.lifecycle.add_device(device_id, "thermo-1", segment=f"plant-{i % 2}")))
        for i in range(40):
            services.lifecycle.add_device(f"spare-{i:03d}", "thermo-1", segment="warehouse")
        alert = Alert.create("thermo-005", "scan_fanout", 42.0, Severity.HIGH, (1_767_225_600.0, 1_767_225_615.0),
                             {"new_destinations": 42})
        services.detection.raise_alerts([alert])
        services.consent.change("alice", "research", True, actor="privacy-officer")
        set_end_of_support(services.store, "thermo-1", services.clock.now() + timedelta(days=5 * 365))
        drainer.drain()
        doc = report(services)
        services.store.engine.dispose()
    (OUT / "example-report.json").write_text(json.dumps(doc, indent=2) + "\n")
    (OUT / "example-report.html").write_text(render_html(doc))
    (OUT / "example-report.pdf").write_bytes(render_pdf(doc))
    print("summary:", doc["summary"])


if __name__ == "__main__":
    main()
