"""The README's first command: ``iotguard demo`` runs the whole system and reports honestly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_json_summary() -> None:
    # More devices than one address may enroll back to back by the per-device limits (a gateway case).
    out = subprocess.run([sys.executable, "-m", "iotguard", "demo", "--devices", "20", "--seconds", "4", "--json"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    # Set comparison by reading identity (device + body digest), not a count difference.
    assert summary["sent"] > 0 and summary["stored"] == summary["sent"]
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["unexpected"] == 0
    # Receipts the hub actually stored, not receipts the devices signed.
    assert summary["privacy_receipts_stored"] == summary["privacy_receipts_signed"] > 0
    for code in ("replay", "forged", "malformed", "unknown_device"):
        assert summary["rejected"].get(code, 0) >= summary["attacks_injected"][code], (code, summary)
    assert summary["throughput_per_s"] > 0
    # Every genuine device attests affirming (verified); the injected tampered device is contraindicated and cut off.
    assert summary["attestation_fleet"] == {"affirming": summary["devices"]}
    assert summary["trust_tiers"] == {"failed": 1, "verified": summary["devices"]}
    tiers = summary["device_trust_tiers"]
    assert len(tiers) == summary["devices"] + 1 and tiers[summary["tampered_device"]["device"]] == "failed"
    assert sorted(set(tiers.values())) == ["failed", "verified"]
    tampered = summary["tampered_device"]
    assert tampered["status"] == "contraindicated" and tampered["trust_tier"] == "failed"
    assert any(r.startswith("executable_mismatch") for r in tampered["reasons"])
    assert tampered["ingest_refused"] is True and tampered["broker_acl_dropped"] is True
    assert summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"] > 0


def test_demo_update_rolls_out_a_good_release_and_stops_a_broken_one() -> None:
    out = subprocess.run([sys.executable, "-m", "iotguard", "demo", "--devices", "10", "--seconds", "2", "--update",
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    update = json.loads(out.stdout.strip().splitlines()[-1])["update"]
    assert set(update["broken"]["states"].values()) == {"aborted"}
    assert set(update["broken"]["reasons"].values()) == {"rollback_rate"}
    assert set(update["good"]["states"].values()) == {"completed"}
    assert update["good"]["versions"] == {"3": 10}
