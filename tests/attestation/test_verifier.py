"""The verifier end to end at the domain level, on both roots of trust: good boots and named attacks."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import timedelta
from pathlib import Path

import cbor2
import pytest

from iotguard.agent.evidence import sign_claims
from iotguard.attestation import Tier
from iotguard.errors import AttestationError
from iotguard.wire.eat import BootEvent, EvidenceClaims, decode_evidence, encode_evidence, event_log_digest

from .conftest import MODEL, NOW, Device, copy_release

NONCE = bytes(range(32))


def test_good_boot_is_affirming(device: Device) -> None:
    token = device.evidence(device.boot(), NONCE)
    result = device.appraise(token, NONCE)
    assert result.status is Tier.AFFIRMING, result.reasons
    vector = result.trustworthiness_vector
    for claim in ("instance-identity", "executables", "configuration", "hardware"):
        assert vector[claim].tier is Tier.AFFIRMING
    assert vector["file-system"].tier is Tier.NONE
    assert result.firmware_version == "1.0.0"
    assert result.keystore_kind == device.root.kind


def test_two_allowed_releases_both_affirm_during_a_staged_rollout(device: Device) -> None:
    for version in ("1.0.0", "1.1.0"):
        token = device.evidence(device.boot(device.firmware.releases[version]), NONCE)
        result = device.appraise(token, NONCE)
        assert result.status is Tier.AFFIRMING, (version, result.reasons)
        assert result.firmware_version == version


def test_release_withdrawn_from_reference_values_is_contraindicated(device: Device) -> None:
    device.firmware.references.remove(MODEL, "1.0.0")
    result = device.appraise(device.evidence(device.boot(), NONCE), NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.trustworthiness_vector["executables"].reasons == ("unknown_firmware_version",)


def test_software_root_is_only_a_warning_where_the_model_wants_a_tpm(device: Device) -> None:
    result = device.appraise(device.evidence(device.boot(), NONCE), NONCE, model="gateway-v1")
    if device.root.kind == "tpm2":
        assert result.status is Tier.AFFIRMING
    else:
        assert result.status is Tier.WARNING
        assert result.trustworthiness_vector["hardware"].reasons == ("keystore_software",)


def _tamper(device: Device, tmp_path: Path, stage: str) -> Path:
    images = copy_release(device.firmware, "1.0.0", tmp_path / "tampered")
    image = bytearray((images / f"{stage}.img").read_bytes())
    image[100] ^= 0x01
    (images / f"{stage}.img").write_bytes(bytes(image))
    return images


@pytest.mark.parametrize(
    ("stage", "claim"),
    [("bootloader", "executables"), ("kernel", "executables"), ("privacy-configuration", "configuration")],
)
def test_tampered_stage_is_contraindicated(device: Device, tmp_path: Path, stage: str, claim: str) -> None:
    """A device whose secure boot was bypassed runs a tampered stage; measured boot and the verifier catch it."""
    images = _tamper(device, tmp_path, stage)
    record = device.boot(images, unsafe_allow_unverified=True)
    result = device.appraise(device.evidence(record, NONCE), NONCE)
    assert result.status is Tier.CONTRAINDICATED
    kind = "executable" if claim == "executables" else "configuration"
    assert result.trustworthiness_vector[claim].reasons == (f"{kind}_mismatch:{stage}",)
    other = "configuration" if claim == "executables" else "executables"
    assert result.trustworthiness_vector[other].tier is Tier.AFFIRMING


def test_tampered_bootloader_is_contraindicated(device: Device, tmp_path: Path) -> None:
    record = device.boot(_tamper(device, tmp_path, "bootloader"), unsafe_allow_unverified=True)
    result = device.appraise(device.evidence(record, NONCE), NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert "executable_mismatch:bootloader" in result.reasons


def test_tampered_kernel_is_contraindicated(device: Device, tmp_path: Path) -> None:
    record = device.boot(_tamper(device, tmp_path, "kernel"), unsafe_allow_unverified=True)
    result = device.appraise(device.evidence(record, NONCE), NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert "executable_mismatch:kernel" in result.reasons


def test_tampered_privacy_configuration_is_contraindicated(device: Device, tmp_path: Path) -> None:
    record = device.boot(_tamper(device, tmp_path, "privacy-configuration"), unsafe_allow_unverified=True)
    result = device.appraise(device.evidence(record, NONCE), NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert "configuration_mismatch:privacy-configuration" in result.reasons


def test_mix_and_match_of_two_signed_releases_is_contraindicated(device: Device, tmp_path: Path) -> None:
    """Every stage is validly signed, but the kernel is from another release than the rest."""
    images = copy_release(device.firmware, "1.0.0", tmp_path / "mixed")
    for suffix in ("img", "manifest"):
        newer = device.firmware.releases["1.1.0"] / f"kernel.{suffix}"
        (images / f"kernel.{suffix}").write_bytes(newer.read_bytes())
    result = device.appraise(device.evidence(device.boot(images), NONCE), NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.trustworthiness_vector["executables"].reasons == ("executable_mismatch:kernel",)


def test_replayed_old_evidence_is_contraindicated(device: Device) -> None:
    """Evidence recorded for an earlier challenge is replayed to a new one."""
    old = device.evidence(device.boot(), b"old challenge nonce 0123456789ab")
    result = device.appraise(old, NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons == ("nonce_mismatch",)
    assert result.firmware_version == "1.0.0"


def test_replayed_old_quote_in_fresh_evidence_is_contraindicated(device: Device) -> None:
    """Malware re-wraps a quote from a good boot into evidence for the new nonce."""
    token = device.evidence(device.boot(), NONCE)
    if device.root.kind == "tpm2":
        # The quote is the token's signature: an old token's quote under the fresh token's claims.
        old = decode_evidence(device.evidence(device.boot(), b"old challenge nonce 0123456789ab"))
        forged = _with_signature(token, old.signature + old.signed_attest)
        expected = "quote_not_bound_to_evidence"
    else:
        good_quote = device.root.quote(b"old nonce", (0, 4, 10, 11))
        claims = dataclasses.replace(decode_evidence(token).claims, quote_attest=good_quote.attest)
        forged, expected = sign_claims(device.root, claims), "quote_nonce_mismatch"
    result = device.appraise(forged, NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons == (expected,)


def test_evidence_signed_by_another_devices_key_is_contraindicated(device: Device, other_device: Device) -> None:
    """A relay or a cloned device answers with evidence made under a different attestation key."""
    record = device.boot()
    token = other_device.evidence(record, NONCE)
    result = device.appraise(token, NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons == ("bad_signature",)
    assert result.trustworthiness_vector["instance-identity"].tier is Tier.CONTRAINDICATED
    assert result.firmware_version == ""  # unauthenticated claims are not repeated


def test_event_log_that_does_not_replay_to_the_quoted_pcrs_is_contraindicated(device: Device, tmp_path: Path) -> None:
    """Malware on a device with a tampered kernel reports the reference kernel digest in the event log."""
    record = device.boot(_tamper(device, tmp_path, "kernel"), unsafe_allow_unverified=True)
    token = device.evidence(record, NONCE)
    claims = decode_evidence(token).claims
    honest_kernel = device.firmware.references.lookup(MODEL, "1.0.0")
    assert honest_kernel is not None
    lying_log = tuple(
        BootEvent(e.pcr, honest_kernel.measurements["kernel"], e.stage, e.version) if e.stage == "kernel" else e
        for e in claims.event_log
    )
    lie = dataclasses.replace(claims, event_log=lying_log, event_log_digest=event_log_digest(lying_log))
    forged = sign_claims(device.root, lie)
    result = device.appraise(forged, NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons == ("event_log_replay_mismatch",)


def test_event_log_digest_claim_must_match_the_log(device: Device) -> None:
    claims = decode_evidence(device.evidence(device.boot(), NONCE)).claims
    lie = dataclasses.replace(claims, event_log_digest=hashlib.sha256(b"other").digest())
    forged = sign_claims(device.root, lie)
    assert device.appraise(forged, NONCE).reasons == ("event_log_digest_mismatch",)


def test_stale_evidence_past_max_age_is_contraindicated(device: Device) -> None:
    token = device.evidence(device.boot(), NONCE)
    assert device.appraise(token, NONCE, now=NOW + timedelta(seconds=300)).status is Tier.AFFIRMING
    result = device.appraise(token, NONCE, now=NOW + timedelta(seconds=301))
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons == ("stale",)


def test_evidence_from_the_future_is_contraindicated(device: Device) -> None:
    token = device.evidence(device.boot(), NONCE, now=NOW + timedelta(seconds=31))
    assert device.appraise(token, NONCE).reasons == ("issued_in_future",)


def test_tampered_key_store_state_is_contraindicated(device: Device) -> None:
    from iotguard.agent.evidence import produce_evidence

    token = produce_evidence(device.root, device.boot(), NONCE, now=NOW, uptime=1, keystore_tamper="enclosure_open")
    result = device.appraise(token, NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.trustworthiness_vector["hardware"].reasons == ("keystore_tampered",)


def test_software_evidence_claiming_to_be_a_tpm_is_refused(device: Device) -> None:
    claims = decode_evidence(device.evidence(device.boot(), NONCE)).claims
    other_kind = "software" if device.root.kind == "tpm2" else "tpm2"
    lie = dataclasses.replace(claims, keystore_kind=other_kind)
    forged = sign_claims(device.root, lie)
    assert device.appraise(forged, NONCE).reasons == ("quote_format_mismatch",)


def test_flipped_signature_byte_is_contraindicated(device: Device) -> None:
    token = bytearray(device.evidence(device.boot(), NONCE))
    token[-1] ^= 1
    assert device.appraise(bytes(token), NONCE).reasons == ("bad_signature",)


@pytest.mark.parametrize("token", [b"", b"\x00", b"\xd2\x84" + b"\x00" * 10, cbor2.dumps([1, 2, 3]), b"\xff" * 20000])
def test_garbage_is_contraindicated_with_a_reason_never_an_exception(device: Device, token: bytes) -> None:
    result = device.appraise(token, NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons == ("malformed_evidence",)


def test_unknown_model_raises_no_appraisal_policy(device: Device) -> None:
    token = device.evidence(device.boot(), NONCE)
    with pytest.raises(AttestationError) as info:
        device.appraise(token, NONCE, model="toaster")
    assert info.value.code == "no_appraisal_policy"


def test_result_is_ear_shaped(device: Device) -> None:
    result = device.appraise(device.evidence(device.boot(), NONCE), NONCE)
    ear = result.to_ear()
    assert ear["eat_profile"] == "tag:github.com,2023:veraison/ear"
    submod = ear["submods"]["boot"]  # type: ignore[index]
    assert submod["ear.status"] == "affirming"
    assert submod["ear.trustworthiness-vector"] == {
        "instance-identity": 2,
        "configuration": 2,
        "executables": 2,
        "hardware": 2,
    }


def test_claims_round_trip_through_the_token(device: Device) -> None:
    record = device.boot()
    claims: EvidenceClaims = decode_evidence(device.evidence(record, NONCE)).claims
    assert claims.nonce == NONCE
    assert claims.event_log == record.events
    assert claims.firmware_version == "1.0.0"
    assert claims.keystore_kind == device.root.kind
    assert claims.uptime == 42
    assert claims.issued_at == int(NOW.timestamp())


def test_quote_with_a_forged_tpm_signature_is_contraindicated(device: Device) -> None:
    """Malware on the device fakes the TPM's quote of good PCRs (it can make the AK sign evidence, not quotes)."""
    token = device.evidence(device.boot(), NONCE)
    if device.root.kind == "tpm2":
        decoded = decode_evidence(token)
        flipped = bytes([decoded.signature[0] ^ 1]) + decoded.signature[1:]
        forged, expected = _with_signature(token, flipped + decoded.signed_attest), "bad_signature"
    else:
        lie = dataclasses.replace(decode_evidence(token).claims, quote_signature=b"\x00" * 64)
        forged, expected = sign_claims(device.root, lie), "quote_signature_unexpected"
    assert device.appraise(forged, NONCE).reasons == (expected,)


def _with_signature(token: bytes, signature: bytes) -> bytes:
    """The token with its COSE_Sign1 signature field replaced."""
    protected, _, payload, _ = cbor2.loads(token).value
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))


def _quote_signed(device: Device) -> None:
    if device.root.kind != "tpm2":
        pytest.skip("quote-signed evidence is the TPM's (ADR 0813)")


def test_tpm_ak_signature_that_is_not_a_quote_is_contraindicated(device: Device, tmp_path: Path) -> None:
    """Malware on a tampered device has the AK TPM2_Sign a made-up TPMS_ATTEST of good PCRs bound to its token.

    A restricted AK refuses to sign data that starts with TPM_GENERATED_VALUE, so the forgery cannot carry
    the magic; the verifier refuses any signed structure without it.
    """
    _quote_signed(device)
    from iotguard.keys.rot import pcr_composite_digest

    good = decode_evidence(device.evidence(device.boot(), NONCE))
    good_digest = good.signed_attest[-32:]
    record = device.boot(_tamper(device, tmp_path, "kernel"), unsafe_allow_unverified=True)
    token = device.evidence(record, NONCE)
    decoded = decode_evidence(token)
    lie = dataclasses.replace(
        decoded.claims, event_log=good.claims.event_log, event_log_digest=good.claims.event_log_digest
    )
    honest = sign_claims(device.root, lie)
    attest = decode_evidence(honest).signed_attest
    assert attest[-32:] != good_digest  # the TPM quoted the tampered PCRs
    assert pcr_composite_digest(device.root.pcr_read((0, 4, 10, 11)), (0, 4, 10, 11)) == attest[-32:]
    fake = b"\x00" + attest[1:-32] + good_digest  # TPM_GENERATED_VALUE's first byte changed
    result = device.appraise(_with_signature(honest, device.root.sign_evidence(fake) + fake), NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons == ("malformed_quote",)
    from tpm2_pytss import TSS2_Exception

    with pytest.raises(TSS2_Exception):  # the TPM itself refuses to sign data imitating a quote
        device.root.sign_evidence(attest[:-32] + good_digest)


def test_tpm_ak_signing_software_style_evidence_is_refused(device: Device, tmp_path: Path) -> None:
    """Malware on a tampered TPM device claims a software root of trust and makes up a software quote.

    TPM2_Sign lets the AK sign it (it does not start with TPM_GENERATED_VALUE); an ES256 (TPM) AK's
    evidence counts only when quote-signed.
    """
    _quote_signed(device)
    from iotguard.keys.rot import extend_pcr, pcr_composite_digest

    good = decode_evidence(device.evidence(device.boot(), NONCE)).claims
    record = device.boot(_tamper(device, tmp_path, "kernel"), unsafe_allow_unverified=True)
    claims = decode_evidence(device.evidence(record, NONCE)).claims
    pcrs = dict.fromkeys(good.pcr_selection, bytes(32))
    for event in good.event_log:
        pcrs[event.pcr] = extend_pcr(pcrs[event.pcr], event.digest)
    software_quote = cbor2.dumps(
        ["iotguard-sw-quote/1", NONCE, list(good.pcr_selection), pcr_composite_digest(pcrs, good.pcr_selection), 1]
    )
    lie = dataclasses.replace(
        claims,
        event_log=good.event_log,
        event_log_digest=good.event_log_digest,
        quote_format="iotguard-sw-quote/1",
        quote_attest=software_quote,
        keystore_kind="software",
    )
    forged = encode_evidence(lie, "ES256", device.root.sign_evidence)
    result = device.appraise(forged, NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons == ("evidence_not_quote_signed",)


def test_quote_signed_evidence_binds_every_claim(device: Device) -> None:
    """Changing any claim after the TPM quoted the token breaks the quote's binding (extraData)."""
    _quote_signed(device)
    token = device.evidence(device.boot(), NONCE)
    decoded = decode_evidence(token)
    lie = dataclasses.replace(decoded.claims, firmware_version="1.1.0")
    forged = _with_signature(sign_claims(device.root, lie), decoded.signature + decoded.signed_attest)
    assert device.appraise(forged, NONCE).reasons == ("quote_not_bound_to_evidence",)
