"""TPM attestation keys certified against the endorsement key at enrollment (credential activation, ADR 0810).

A device with a TPM proves that the AK it attests with sits in the TPM whose
EK was recorded at enrollment: the hub makes a credential (TPM2_MakeCredential)
for that EK and the AK's name, and only that TPM, with that AK loaded,
recovers the secret (TPM2_ActivateCredential). TPM keys are never bound on
first use.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from iotguard.agent import Agent
from iotguard.agent.attester import Attester
from iotguard.audit import AuditEvent, EventType
from iotguard.errors import KeyStoreError
from tests.attestation.conftest import Device, EkCa, Firmware, _make_device, endorse
from tests.attestation.test_hub_attestation import _attest, _certify_ak, _nonce
from tests.hub.conftest import HubParts

pytestmark = pytest.mark.swtpm


@pytest.fixture
def tpm_device(request: pytest.FixtureRequest, tmp_path: Path, firmware: Firmware) -> Iterator[Device]:
    """The enrolled device, with its own TPM (swtpm)."""
    made, close = _make_device("tpm2", request, tmp_path / "device-a", firmware, "device-a")
    yield made
    close()


@pytest.fixture
def foreign_tpm_device(other_swtpm: Any, tmp_path: Path, firmware: Firmware, tpm_device: Device) -> Iterator[Device]:
    """An attacker's device on another TPM (its own EK, its own AK): same firmware, same boot."""
    from iotguard.keys.tpm import TpmRootOfTrust

    root = TpmRootOfTrust(tmp_path / "foreign-tpm", tcti=other_swtpm.tcti)
    yield Device("foreign", tpm_device.store, root, tpm_device.anchor, other_swtpm.power_cycle, firmware)
    root.close()


@pytest.fixture
def second_ak_device(request: pytest.FixtureRequest, tmp_path: Path, firmware: Firmware,
                     tpm_device: Device) -> Iterator[Device]:
    """Another AK in the enrolled device's own TPM."""
    made, close = _make_device("tpm2", request, tmp_path / "device-b", firmware, "device-b")
    yield made
    close()


def _certify_request(hub: HubParts, agent: Agent, area: bytes, secret: bytes = b"") -> Any:
    body = {"ak_public_area": area, "secret": secret, "ek_certificate": b""}
    return hub.client.post("/v1/attest/ak", json=agent._signed("certify_ak", body)[0])


def _evidence(hub: HubParts, agent: Agent, device: Device) -> Any:
    record = device.boot()
    nonce = _nonce(hub, agent)
    token = device.evidence(record, nonce, now=datetime.now(UTC))
    ak = device.root.attestation_key()
    return _attest(hub, agent, {"nonce": nonce, "evidence": token, "attestation_key": ak.public_key,
                                "algorithm": ak.algorithm.value})


def _key_events(hub: HubParts) -> list[dict[str, Any]]:
    hub.deliver()
    log = hub.services.audit.log
    events = [AuditEvent.from_cbor(e) for e in log.entries(0, log.size())]
    return [dict(e.details) for e in events if e.type == EventType.ATTESTATION_KEY_CERTIFIED]


def test_certified_ak_attests_affirming(hub: HubParts, tpm_device: Device) -> None:
    a = hub.agent("dev-1")
    endorse(hub, "dev-1", tpm_device.root)
    _certify_ak(hub, a, tpm_device)
    endorsement = hub.services.attestation.store.endorsement("dev-1")
    assert endorsement is not None and endorsement.certified_key == tpm_device.root.attestation_key()
    r = _evidence(hub, a, tpm_device)
    assert r.status_code == 200 and r.json()["status"] == "affirming", r.text
    assert [e["status"] for e in _key_events(hub)] == ["ek_recorded", "certified"]


def test_ak_not_resident_in_the_tpm_of_the_enrolled_ek_is_refused(
        hub: HubParts, tpm_device: Device, foreign_tpm_device: Device) -> None:
    """Attack: a clone (or malware with a TPM of its own) presents an AK from another TPM than the enrolled EK's."""
    a = hub.agent("dev-1")
    endorse(hub, "dev-1", tpm_device.root)
    foreign_area = foreign_tpm_device.root.attestation_key_public_area()  # type: ignore[attr-defined]
    r = _certify_request(hub, a, foreign_area)
    assert r.status_code == 200, r.text  # a credential for the enrolled EK and the foreign AK's name ...
    blob, encrypted = bytes.fromhex(r.json()["credential_blob"]), bytes.fromhex(r.json()["encrypted_secret"])
    with pytest.raises(KeyStoreError):  # ... that the foreign TPM cannot activate (it does not hold the EK)
        foreign_tpm_device.root.activate_credential(blob, encrypted)  # type: ignore[attr-defined]
    with pytest.raises(KeyStoreError):  # ... nor the enrolled TPM (the foreign AK is not in it)
        tpm_device.root.activate_credential(blob, encrypted)  # type: ignore[attr-defined]
    r = _certify_request(hub, a, foreign_area, secrets.token_bytes(32))  # a guess
    assert (r.status_code, r.json()["error"]) == (401, "ak_certification_failed")
    # Evidence signed by the uncertified foreign AK, from a genuine boot: refused, posture untouched.
    r = _evidence(hub, a, foreign_tpm_device)
    assert (r.status_code, r.json()["error"]) == (403, "attestation_key_not_certified")
    assert hub.services.posture.posture.require("dev-1").trust_tier == "unverified"
    assert hub.services.attestation.history("dev-1") == []
    refusals = [e["reasons"] for e in _key_events(hub) if e["status"] == "refused"]
    assert refusals == [["ak_certification_failed"]]


def test_tpm_evidence_is_not_bound_on_first_use(hub: HubParts, tpm_device: Device) -> None:
    """Attack: a first TPM evidence used to bind its AK (trust on first use); uncertified, it is refused now."""
    a = hub.agent("dev-1")
    r = _evidence(hub, a, tpm_device)  # no EK recorded, no certification
    assert (r.status_code, r.json()["error"]) == (403, "attestation_key_not_certified")
    assert hub.services.attestation.store.key_of("dev-1") is None
    endorse(hub, "dev-1", tpm_device.root)
    r = _evidence(hub, a, tpm_device)  # EK recorded, AK not yet certified
    assert (r.status_code, r.json()["error"]) == (403, "attestation_key_not_certified")


def test_certification_without_a_recorded_ek_is_refused(hub: HubParts, tpm_device: Device) -> None:
    a = hub.agent("dev-1")
    r = _certify_request(hub, a, tpm_device.root.attestation_key_public_area())  # type: ignore[attr-defined]
    assert (r.status_code, r.json()["error"]) == (409, "no_endorsement_key")


def test_credential_answer_is_single_use_and_bound_to_its_ak(
        hub: HubParts, tpm_device: Device, second_ak_device: Device) -> None:
    """Attack: replaying a recorded credential answer, or answering for another AK than the credential's."""
    a = hub.agent("dev-1")
    root = tpm_device.root
    endorse(hub, "dev-1", root)
    area = root.attestation_key_public_area()  # type: ignore[attr-defined]
    r = _certify_request(hub, a, area)
    secret = root.activate_credential(bytes.fromhex(r.json()["credential_blob"]),  # type: ignore[attr-defined]
                                      bytes.fromhex(r.json()["encrypted_secret"]))
    other_area = second_ak_device.root.attestation_key_public_area()  # type: ignore[attr-defined]
    r = _certify_request(hub, a, other_area, secret)  # the secret, claimed for another AK
    assert (r.status_code, r.json()["error"]) == (401, "ak_certification_failed")
    assert _certify_request(hub, a, area, secret).status_code == 200
    r = _certify_request(hub, a, area, secret)  # replayed
    assert (r.status_code, r.json()["error"]) == (401, "ak_certification_failed")


def test_a_new_ek_requires_a_new_certification(hub: HubParts, tpm_device: Device) -> None:
    a = hub.agent("dev-1")
    endorse(hub, "dev-1", tpm_device.root)
    _certify_ak(hub, a, tpm_device)
    assert _evidence(hub, a, tpm_device).json()["status"] == "affirming"
    endorse(hub, "dev-1", tpm_device.root)
    r = _evidence(hub, a, tpm_device)
    assert (r.status_code, r.json()["error"]) == (403, "attestation_key_not_certified")


def test_a_malformed_ek_or_ak_is_refused_not_500(hub: HubParts, tpm_device: Device) -> None:
    a = hub.agent("dev-1")
    with pytest.raises(KeyStoreError):
        hub.services.attestation.certification.record_endorsement_key("dev-1", b"\x00\x04junk")
    with pytest.raises(KeyStoreError):  # an AK is not an EK
        hub.services.attestation.certification.record_endorsement_key(
            "dev-1", tpm_device.root.attestation_key_public_area())  # type: ignore[attr-defined]
    endorse(hub, "dev-1", tpm_device.root)
    for area in (b"", b"\x00\x10garbage", tpm_device.root.endorsement_key(), b"\xff" * 1024):  # type: ignore[attr-defined]
        r = _certify_request(hub, a, area)
        assert (r.status_code, r.json()["error"]) == (400, "malformed"), area[:8]


def test_agent_certifies_its_tpm_ak_by_itself_before_attesting(hub: HubParts, tpm_device: Device) -> None:
    a = hub.agent("dev-1")
    endorse(hub, "dev-1", tpm_device.root)
    attester = Attester(tpm_device.root, tpm_device.boot())
    assert attester.needs_certification
    assert a.attest(attester)["status"] == "affirming"
    assert not attester.needs_certification


def test_cli_reads_a_tpm_ek_and_records_it(hub: HubParts, tpm_device: Device, swtpm: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], ek_ca: EkCa) -> None:
    """``iotguard tpm-ek`` at manufacture, ``iotguard endorsement-key`` at enrollment; then the agent certifies."""
    from iotguard.cli.main import main

    a = hub.agent("dev-1")
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{hub.cfg.data_dir}"\n')
    ek_file = tmp_path / "dev-1.ek"
    assert main(["tpm-ek", "--tcti", swtpm.tcti, "--out", str(ek_file)]) == 0
    assert ek_file.read_bytes() == tpm_device.root.endorsement_key()  # type: ignore[attr-defined]
    cert_file = tmp_path / "dev-1.ek.pem"
    cert_file.write_bytes(ek_ca.certify(ek_file.read_bytes()))
    assert main(["endorsement-key", "--config", str(conf), "dev-1", str(ek_file), "--certificate", str(cert_file)]) == 0
    assert "recorded" in capsys.readouterr().out
    assert a.attest(Attester(tpm_device.root, tpm_device.boot()))["status"] == "affirming"
    garbage = tmp_path / "garbage.ek"
    garbage.write_bytes(b"\x00\x02no")
    assert main(["endorsement-key", "--config", str(conf), "dev-1", str(garbage)]) != 0
