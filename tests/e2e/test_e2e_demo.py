"""The README's first command: ``iotguard demo`` runs the whole system and reports honestly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iotguard.config import HubConfig
from iotguard.hub.store import HubStore

pytestmark = pytest.mark.slow


def test_demo_json_summary(tmp_path: Path) -> None:
    # More devices than one address may enroll back to back by the per-device limits (a gateway case).
    out = subprocess.run([sys.executable, "-m", "iotguard", "demo", "--devices", "20", "--seconds", "4", "--json",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # The operator tokens the demo issued itself (security, analyst, ledger) are revoked when it ends.
    tokens = HubStore.open(HubConfig(data_dir=str(tmp_path / "hub")).resolved_database_url()).list_api_tokens()
    assert len(tokens) == 3 and all(t["revoked"] for t in tokens), tokens
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    # Set comparison by reading identity (device + body digest), not a count difference.
    assert summary["sent"] > 0 and summary["stored"] == summary["sent"]
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["unexpected"] == 0
    # Receipts the hub actually stored, not receipts the devices signed.
    assert summary["privacy_receipts_stored"] == summary["privacy_receipts_signed"] > 0
    for code in ("replay", "forged", "malformed", "unknown_device"):
        assert summary["rejected"].get(code, 0) >= summary["attacks_injected"][code], (code, summary)
    assert summary["throughput_per_s"] > 0
    # Every genuine device (and the network sensor) attests affirming (verified); the injected tampered device is
    # contraindicated and cut off.
    assert summary["attestation_fleet"] == {"affirming": summary["devices"]}
    assert summary["trust_tiers"] == {"failed": 1, "verified": summary["devices"] + 1}
    tiers = summary["device_trust_tiers"]
    assert len(tiers) == summary["devices"] + 2 and tiers[summary["tampered_device"]["device"]] == "failed"
    assert sorted(set(tiers.values())) == ["failed", "verified"]
    tampered = summary["tampered_device"]
    assert tampered["status"] == "contraindicated" and tampered["trust_tier"] == "failed"
    assert any(r.startswith("executable_mismatch") for r in tampered["reasons"])
    assert tampered["ingest_refused"] is True and tampered["broker_acl_dropped"] is True
    assert summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"] > 0
    _check_analytics(summary["analytics"], summary["devices"] - 1)  # the scanner no longer takes part
    _check_detection(summary["detection"])


def _check_analytics(analytics: dict[str, Any], devices: int) -> None:
    """Secure aggregation over the device plane with a third dropped, an HE sum, DP queries against the ledger."""
    sa = analytics["secure_aggregation"]
    assert sa["phase"] == "done" and sa["invited"] == devices
    assert sa["dropped_after_sharing"] == devices // 3 and sa["survivors"] == devices - devices // 3
    # The hub's unmasked sum is the sum of the survivors' vectors, computed by the demo from what it gave them.
    assert sa["sum"] == sa["expected_sum"] and sum(sa["sum"]) > 0 and sa["exact"] is True
    he = analytics["he_sum"]
    assert he["phase"] == "done" and he["submitted"] == he["invited"] == devices
    assert he["sum"] == he["expected_sum"] and he["exact"] is True
    assert all(h >= s for h, s in zip(he["sum"], sa["sum"], strict=True)) and he["sum"] != sa["sum"]
    dp = analytics["dp"]
    assert dp["answered"]["status"] == 200 and dp["answered"]["purpose"] == "fleet_statistics"
    assert dp["answered"]["noise_scale"] > 0
    # The over-budget query is refused by the ledger, and the subject it would have charged spent nothing.
    assert dp["refused"]["status"] == 429 and dp["refused"]["reason"] == "budget_exhausted"
    assert dp["remaining_before"] == dp["remaining_after"] < dp["refused"]["epsilon"]
    assert dp["refusal_spent_nothing"] is True


def _check_detection(detection: dict[str, Any]) -> None:
    """The scanner alerted on and quarantined, its publish refused by the broker, the alert proven in the log."""
    assert detection["learning"]["flows"] > 0 and detection["learning"]["still_learning"] is True
    scanner = detection["scanner"]
    assert scanner["alert"]["detector"] == "scan_fanout" and scanner["alert"]["severity"] == "high"
    assert scanner["actions"]["quarantine"] == "done"
    broker = scanner["broker"]
    assert broker["grant_removed"] and broker["published"] and broker["refused_by_broker"]
    assert scanner["stored_before"] > 0 and broker["stored_after"] == scanner["stored_before"]
    assert scanner["audit"]["inclusion_verified"] is True and scanner["audit"]["index"] is not None
    # No benign fleet device alerted or quarantined.
    assert scanner["alerted_devices"] == [scanner["device"]] and scanner["other_alerts"] == []
    assert scanner["quarantined_devices"] == [scanner["device"]]
    assert scanner["contained"] is True and detection["quarantined_at_end"] is True


def test_demo_update_rolls_out_a_good_release_and_stops_a_broken_one() -> None:
    # Ten devices: below the detection step's minimum (it is skipped); analytics are checked above.
    out = subprocess.run([sys.executable, "-m", "iotguard", "demo", "--devices", "10", "--seconds", "2", "--update",
                          "--no-analytics", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert "analytics" not in summary and "detection" not in summary
    update = summary["update"]
    assert set(update["broken"]["states"].values()) == {"aborted"}
    assert set(update["broken"]["reasons"].values()) == {"rollback_rate"}
    assert set(update["good"]["states"].values()) == {"completed"}
    assert update["good"]["versions"] == {"3": 10}
