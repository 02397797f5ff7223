"""Attestation through the hub: device plane, appraisal, posture, ingest, broker ACL, audit, quarantine release.

Each test runs on the software root of trust and on the TPM backend (swtpm).
The agent's identity key signs the ``attest`` requests; the simulated device's
root of trust boots the image set and produces the evidence.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event

from iotguard.agent import Agent
from iotguard.agent.attester import Attester, boot_from_config
from iotguard.agent.boot import BootRecord
from iotguard.audit import AuditEvent, EventType
from iotguard.cli.main import main
from iotguard.errors import EnrollmentError, SecureBootError
from iotguard.hub.ingest import Incoming
from iotguard.hub.policy_store import load_posture
from iotguard.hub.services.attestation import CHALLENGE_KIND
from iotguard.hub.stores.attestation import policies, results
from iotguard.wire import Reading, encode_reading
from tests.attestation.conftest import MODEL, POLICY, Device, Firmware, endorse
from tests.hub.conftest import HubParts


def _attest(hub: HubParts, agent: Agent, body: dict[str, Any]) -> Any:
    wire, _ = agent._signed("attest", body)
    return hub.client.post("/v1/attest", json=wire)


def _nonce(hub: HubParts, agent: Agent) -> bytes:
    r = _attest(hub, agent, {"nonce": b"", "evidence": b"", "attestation_key": b"", "algorithm": ""})
    assert r.status_code == 200, r.text
    return bytes.fromhex(r.json()["nonce"])


def _certify_ak(hub: HubParts, agent: Agent, device: Device) -> None:
    """A TPM device: record its EK (as at enrollment) and certify its AK, unless one is certified already."""
    if device.root.kind != "tpm2":
        return
    certification = hub.services.attestation.certification
    endorsement = certification.store.endorsement(agent.device_id)
    if endorsement is None:
        endorse(hub, agent.device_id, device.root)
    elif endorsement.certified_key is not None:
        return

    def post(body: dict[str, Any]) -> Any:
        r = hub.client.post("/v1/attest/ak", json=agent._signed("certify_ak", body)[0])
        assert r.status_code == 200, r.text
        return r.json()

    Attester(device.root, BootRecord((), "", b"", ())).certify(post)


def _endorse(hub: HubParts, device_id: str, device: Device) -> None:
    """Record a TPM device's EK at the hub, as enrollment does (the agent then certifies its AK by itself)."""
    if device.root.kind == "tpm2":
        endorse(hub, device_id, device.root)


def _evidence(hub: HubParts, agent: Agent, device: Device, nonce: bytes, token: bytes) -> Any:
    _certify_ak(hub, agent, device)
    ak = device.root.attestation_key()
    return _attest(hub, agent, {"nonce": nonce, "evidence": token, "attestation_key": ak.public_key,
                                "algorithm": ak.algorithm.value})


def _attest_boot(hub: HubParts, agent: Agent, device: Device, images: Path | None = None, *,
                 unsafe: bool = False) -> Any:
    record = device.boot(images, unsafe_allow_unverified=unsafe)
    nonce = _nonce(hub, agent)
    return _evidence(hub, agent, device, nonce, device.evidence(record, nonce, now=datetime.now(UTC)))


def _tampered(firmware: Firmware, tmp_path: Path, stage: str) -> Path:
    target = shutil.copytree(firmware.releases["1.0.0"], tmp_path / f"tampered-{stage}")
    image = target / f"{stage}.img"
    image.write_bytes(image.read_bytes() + b"\x00implant")
    return target


def _publish(hub: HubParts, agent: Agent) -> int:
    _s, env = agent.sealer.seal(encode_reading(Reading(1_700_000_000_000, {"temperature": 21.0}, "heating_control")))
    return hub.processor.process([Incoming(agent.sealer.topic, env)]).stored


def _results(hub: HubParts) -> list[dict[str, Any]]:
    hub.deliver()
    log = hub.services.audit.log
    events = [AuditEvent.from_cbor(e) for e in log.entries(0, log.size())]
    return [dict(e.details) for e in events if e.type == EventType.ATTESTATION_RESULT]


def test_affirming_evidence_verifies_the_device_everywhere(hub: HubParts, device: Device) -> None:
    a = hub.agent("dev-1")
    r = _attest_boot(hub, a, device)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "affirming" and r.json()["trust_tier"] == "verified"
    posture = hub.services.posture.posture.require("dev-1")
    assert posture.trust_tier == "verified" and posture.attested_at is not None
    saved = load_posture(hub.store.engine).require("dev-1")  # other hub processes see it
    assert saved.trust_tier == "verified" and saved.attested_at == posture.attested_at
    assert _results(hub)[-1]["status"] == "affirming"
    assert hub.services.attestation.history("dev-1")[0].keystore_kind == device.root.kind
    assert _publish(hub, a) == 1


@pytest.mark.parametrize("stage", ["bootloader", "kernel", "privacy-configuration"])
def test_tampered_stage_is_contraindicated_then_refused_at_ingest_and_broker(
        hub: HubParts, device: Device, firmware: Firmware, tmp_path: Path, stage: str) -> None:
    a = hub.agent("dev-1")
    assert _publish(hub, a) == 1
    assert re.search(r"iotguard/[^\n]*/dev-1/telemetry", hub.services.posture.broker_acl())
    # Secure boot bypassed (unsafe): the tampered stage runs, measured boot records it.
    r = _attest_boot(hub, a, device, _tampered(firmware, tmp_path, stage), unsafe=True)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "contraindicated" and r.json()["trust_tier"] == "failed"
    assert any(stage in reason for reason in r.json()["reasons"]), r.json()
    assert load_posture(hub.store.engine).require("dev-1").trust_tier == "failed"
    assert _publish(hub, a) == 0  # ingest refuses
    with pytest.raises(EnrollmentError, match="403 policy_denied"):
        a.renew_certificate()  # the API refuses its device requests (but attestation)
    assert "dev-1/telemetry" not in hub.services.posture.broker_acl()  # the broker ACL cuts it off
    assert _results(hub)[-1]["status"] == "contraindicated"


def test_replayed_evidence_nonce_reused_is_refused(hub: HubParts, device: Device) -> None:
    a = hub.agent("dev-1")
    record = device.boot()
    nonce = _nonce(hub, a)
    token = device.evidence(record, nonce, now=datetime.now(UTC))
    assert _evidence(hub, a, device, nonce, token).json()["status"] == "affirming"
    r = _evidence(hub, a, device, nonce, token)
    assert (r.status_code, r.json()["error"]) == (409, "replay")
    assert len(hub.services.attestation.history("dev-1")) == 1
    last = _results(hub)[-1]
    assert (last["status"], last["reasons"]) == ("refused", ["nonce_unknown"])


def test_nonce_issued_to_another_device_is_refused(hub: HubParts, device: Device) -> None:
    a, b = hub.agent("dev-1"), hub.agent("dev-2")
    record = device.boot()
    nonce = _nonce(hub, b)
    r = _evidence(hub, a, device, nonce, device.evidence(record, nonce, now=datetime.now(UTC)))
    assert (r.status_code, r.json()["error"]) == (409, "replay")
    assert hub.services.posture.posture.require("dev-1").trust_tier == "unverified"


def test_evidence_signed_by_another_devices_key_is_refused(
        hub: HubParts, device: Device, other_device: Device) -> None:
    a = hub.agent("dev-1")
    assert _attest_boot(hub, a, device).json()["status"] == "affirming"  # dev-1's AK is now bound
    # A clone or relay presents another device's evidence, naming that device's key: refused.
    r = _attest_boot(hub, a, other_device)
    assert (r.status_code, r.json()["error"]) == (401, "attestation_key_mismatch")
    # Naming dev-1's key with the other device's evidence: its signature does not verify.
    record = other_device.boot()
    nonce = _nonce(hub, a)
    token = other_device.evidence(record, nonce, now=datetime.now(UTC))
    r = _evidence(hub, a, device, nonce, token)
    assert r.json()["status"] == "contraindicated" and "bad_signature" in r.json()["reasons"]
    assert hub.services.posture.posture.require("dev-1").trust_tier == "failed"


def test_quarantined_device_released_by_fresh_affirming_evidence_and_not_otherwise(
        hub: HubParts, device: Device, firmware: Firmware, tmp_path: Path) -> None:
    a = hub.agent("dev-1")
    admin = hub.operator_token("security-admin")

    def release() -> int:
        return int(hub.client.post("/v1/devices/dev-1/release", json={"reason": "r"}, headers=admin).status_code)

    assert hub.client.post("/v1/devices/dev-1/quarantine", json={"reason": "scan"}, headers=admin).status_code == 200
    assert release() == 403  # no attestation yet
    r = _attest_boot(hub, a, device, _tampered(firmware, tmp_path, "kernel"), unsafe=True)
    assert r.json()["status"] == "contraindicated"  # a quarantined device may attest ...
    assert release() == 403
    assert hub.services.posture.posture.require("dev-1").quarantined
    assert _attest_boot(hub, a, device).json()["status"] == "affirming"  # ... and fresh good evidence releases it
    assert release() == 200
    assert not hub.services.posture.posture.require("dev-1").quarantined
    assert _publish(hub, a) == 1


def test_model_without_appraisal_policy_is_refused_not_500(hub: HubParts, device: Device) -> None:
    a = hub.agent("dev-9")
    with hub.store.engine.begin() as c:
        c.execute(policies.delete())
    r = _attest_boot(hub, a, device)
    assert (r.status_code, r.json()["error"]) == (409, "no_appraisal_policy")
    assert hub.services.posture.posture.require("dev-9").trust_tier == "unverified"


def test_agent_attests_by_itself_and_answers_a_hub_challenge(hub: HubParts, device: Device) -> None:
    """The agent's runtime: device-initiated attestation, then an answer to a nonce the hub issued."""
    a = hub.agent("dev-1")
    _endorse(hub, "dev-1", device)
    attester = Attester(device.root, device.boot())
    assert a.attest(attester)["status"] == "affirming"
    nonce = hub.services.attestation.challenge("dev-1")
    assert a.attest(attester, nonce)["trust_tier"] == "verified"
    assert [h.status for h in hub.services.attestation.history("dev-1")] == ["affirming", "affirming"]


def test_hub_challenge_goes_out_on_cmd_and_the_agent_answers_it(hub: HubParts, device: Device) -> None:
    a = hub.agent("dev-1")
    _certify_ak(hub, a, device)
    a.attester = Attester(device.root, device.boot())
    sent: list[tuple[str, bytes]] = []
    hub.services.commands.attach(lambda topic, payload: sent.append((topic, payload)))
    hub.services.attestation.queue_challenge("dev-1")
    hub.deliver()
    assert len(sent) == 1 and sent[0][0].endswith("/dev-1/cmd")
    a._on_command(sent[0][1])  # as the MQTT client would (authenticated command)
    deadline = time.monotonic() + 20
    while not hub.services.attestation.history("dev-1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.services.attestation.history("dev-1")[0].status == "affirming"
    assert hub.services.posture.posture.require("dev-1").trust_tier == "verified"


def test_an_affirming_record_is_never_visible_beside_the_old_trust_tier(hub: HubParts, device: Device) -> None:
    """Posture first: when the appraisal's record commits, the posture every decision reads is already set."""
    a = hub.agent("dev-1")
    engine = hub.services.posture.store.engine
    recording: set[object] = set()  # connections whose transaction records an appraisal
    tiers_at_commit: list[str] = []

    def on_execute(conn: object, statement: Any, *_args: Any) -> None:
        if getattr(statement, "table", None) is results and statement.is_insert:
            recording.add(conn)

    def at_commit(conn: object) -> None:
        if conn in recording:
            recording.discard(conn)
            tiers_at_commit.append(hub.services.posture.posture.require("dev-1").trust_tier)

    event.listen(engine, "before_execute", on_execute)
    event.listen(engine, "commit", at_commit)
    try:
        assert _attest_boot(hub, a, device).json()["status"] == "affirming"
    finally:
        event.remove(engine, "before_execute", on_execute)
        event.remove(engine, "commit", at_commit)
    assert tiers_at_commit == ["verified"]


def test_a_failed_appraisal_commit_leaves_the_posture_as_it_was(hub: HubParts, device: Device) -> None:
    a = hub.agent("dev-1")
    _certify_ak(hub, a, device)
    record = device.boot()
    nonce = _nonce(hub, a)
    token = device.evidence(record, nonce, now=datetime.now(UTC))
    engine = hub.services.posture.store.engine

    def refuse_commit(_conn: object) -> None:
        raise RuntimeError("disk gone")

    event.listen(engine, "commit", refuse_commit)
    try:
        with pytest.raises(RuntimeError, match="disk gone"):
            hub.services.attestation.appraise("dev-1", nonce, token, device.root.attestation_key())
    finally:
        event.remove(engine, "commit", refuse_commit)
    posture = hub.services.posture.posture.require("dev-1")
    assert (posture.trust_tier, posture.attested_at) == ("unverified", None)
    assert hub.services.attestation.history("dev-1") == []


def test_cli_reference_values_policy_posture_and_challenge(
        hub: HubParts, device: Device, firmware: Firmware, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{hub.cfg.data_dir}"\n')
    c = ["--config", str(conf)]
    assert main(["reference-values", *c, "add", "thermo-2", "1.0.0", "--images", str(firmware.releases["1.0.0"])]) == 0
    capsys.readouterr()
    assert main(["reference-values", *c, "ls", "--json"]) == 0
    listed = {(r["model"], r["version"]): r["measurements"] for r in json.loads(capsys.readouterr().out)}
    expected = firmware.references.lookup(MODEL, "1.0.0")
    assert expected is not None
    assert listed[("thermo-2", "1.0.0")] == {k: v.hex() for k, v in expected.measurements.items()}
    assert set(listed) == {("thermo-1", "1.0.0"), ("thermo-1", "1.1.0"), ("thermo-2", "1.0.0")}
    policy = tmp_path / "thermo-2.toml"
    policy.write_text(POLICY.split("[models.gateway-v1]")[0].replace(MODEL, "thermo-2"))
    assert main(["attestation-policy", *c, "set", "thermo-2", str(policy)]) == 0
    assert main(["attestation-policy", *c, "set", "thermo-3", str(policy)]) == 1  # names another model
    a = hub.agent("dev-1", model="thermo-2")
    _endorse(hub, "dev-1", device)
    assert a.attest(Attester(device.root, device.boot()))["status"] == "affirming"
    capsys.readouterr()
    assert main(["devices", *c, "posture", "dev-1", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["trust_tier"], row["last_appraisal"]) == ("verified", "affirming") and row["attested_at"]
    assert main(["attest", *c, "dev-1"]) == 0
    assert hub.services.outbox.pending([CHALLENGE_KIND]) == 1


def test_agent_boots_from_its_configuration_and_attests(hub: HubParts, firmware: Firmware) -> None:
    """``iotguard agent`` with ``agent.boot_images_dir``: anchor sealed once, measured boot, affirming attestation."""
    a = hub.agent("dev-1")
    key = firmware.key.public_key().public_bytes_raw().hex()
    cfg = dataclasses.replace(a.cfg, boot_images_dir=str(firmware.releases["1.1.0"]), firmware_public_key=key)
    assert a.attest(boot_from_config(cfg, a.keystore))["status"] == "affirming"
    # A later start with another key configured keeps the sealed anchor, and boots again from reset.
    again = dataclasses.replace(cfg, firmware_public_key=Ed25519PrivateKey.generate().public_key()
                                .public_bytes_raw().hex())
    assert a.attest(boot_from_config(again, a.keystore))["status"] == "affirming"
    assert hub.services.attestation.history("dev-1")[0].firmware_version == "1.1.0"


def test_agent_secure_boot_refuses_a_tampered_stage_from_its_configuration(
        hub: HubParts, firmware: Firmware, tmp_path: Path) -> None:
    a = hub.agent("dev-1")
    cfg = dataclasses.replace(a.cfg, boot_images_dir=str(_tampered(firmware, tmp_path, "kernel")),
                              firmware_public_key=firmware.key.public_key().public_bytes_raw().hex())
    with pytest.raises(SecureBootError):
        boot_from_config(cfg, a.keystore)
