"""What the verifier computes once per distinct input is keyed so that a changed input is seen.

The event-log replay is cached per (log, policy stages); a quote's TPMS_ATTEST
layout per (name, qualifying data) lengths. Each test here fails if its cache
key or per-appraisal check were dropped. The weighing's fast path for an
all-affirming vector is checked against advisory and ignored claims.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest

from iotguard.agent.evidence import sign_claims
from iotguard.attestation import Tier, Verifier, load_appraisal_policy, parse_quote
from iotguard.attestation.policy import ModelPolicy
from iotguard.attestation.verifier import _replay_of
from iotguard.wire.eat import BootEvent, Evidence, decode_evidence

from .conftest import MODEL, NOW, POLICY, Device
from .test_verifier import _tamper

NONCE = bytes(range(32))
# sensor-v1's stages with the bootloader's and kernel's PCRs swapped: the same PCR selection.
SWAPPED = (
    POLICY.split("[models.gateway-v1]")[0]
    .replace("bootloader = 0, kernel = 4", "bootloader = 4, kernel = 0")
    .replace("models.sensor-v1", "models.swapped-v1")
)


def _verifier(device: Device, policy: str) -> Verifier:
    return Verifier(device.firmware.references, load_appraisal_policy(policy))


def _appraise(device: Device, verifier: Verifier, token: bytes, model: str = MODEL) -> tuple[Tier, tuple[str, ...]]:
    ak = device.root.attestation_key()
    result = verifier.appraise(token, attestation_key=ak, expected_nonce=NONCE, model=model, now=NOW)
    return result.status, result.reasons


def test_a_lying_log_fails_even_after_the_same_log_replayed_for_an_honest_boot(device: Device, tmp_path: Path) -> None:
    """Check that a cached replay is compared with every quote: the honest boot's log, claimed over tampered PCRs."""
    honest = device.evidence(device.boot(), NONCE)
    assert device.appraise(honest, NONCE).status is Tier.AFFIRMING  # the honest log's replay is now cached
    record = device.boot(_tamper(device, tmp_path, "kernel"), unsafe_allow_unverified=True)
    claims = decode_evidence(device.evidence(record, NONCE)).claims
    lie = dataclasses.replace(claims, event_log=decode_evidence(honest).claims.event_log)
    lie = dataclasses.replace(lie, event_log_digest=decode_evidence(honest).claims.event_log_digest)
    result = device.appraise(sign_claims(device.root, lie), NONCE)
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons == ("event_log_replay_mismatch",)


def test_the_same_log_under_a_policy_with_other_stages_is_replayed_afresh(device: Device) -> None:
    """Check the replay is keyed by the policy's stages: one log, two stage maps with the same PCR selection."""
    token = device.evidence(device.boot(), NONCE)
    both = _verifier(device, POLICY + SWAPPED)
    assert _appraise(device, both, token) == (Tier.AFFIRMING, ())
    assert _appraise(device, both, token, model="swapped-v1") == (Tier.CONTRAINDICATED, ("unexpected_event",))
    assert _appraise(device, both, token) == (Tier.AFFIRMING, ())


def test_a_cached_replay_is_used_only_for_an_equal_log(device: Device) -> None:
    """Check the cache never stands on the log's hash alone: a different log under the same hash is replayed."""
    evidence = decode_evidence(device.evidence(device.boot(), NONCE))
    policy = load_appraisal_policy(POLICY).for_model(MODEL)
    assert isinstance(policy, ModelPolicy)
    first = _replay_of(evidence, policy)
    assert first.refusal == "" and first.complete
    events = evidence.claims.event_log
    swapped = (BootEvent(4, events[0].digest, events[0].stage, events[0].version), *events[1:])
    other: Evidence = dataclasses.replace(evidence, claims=dataclasses.replace(evidence.claims, event_log=swapped))
    assert other.event_log_sha256 == evidence.event_log_sha256  # the same key, made up
    assert _replay_of(other, policy).refusal == "unexpected_event"
    assert _replay_of(evidence, policy) == first


@pytest.mark.parametrize(
    ("claim", "weight", "expected"),
    [
        ("hardware", "required", (Tier.CONTRAINDICATED, ("keystore_not_allowed",))),
        ("hardware", "advisory", (Tier.WARNING, ("keystore_not_allowed",))),
        ("hardware", "ignored", (Tier.AFFIRMING, ())),
    ],
)
def test_weighing_counts_each_claim_by_its_weight(device: Device, claim: str, weight: str, expected: object) -> None:
    """Check the all-affirming fast path does not skip a contraindicated claim that counts."""
    policy = POLICY.replace('hardware_affirming = ["tpm2", "software"]', "hardware_affirming = []", 1).replace(
        f'{claim} = "required"', f'{claim} = "{weight}"', 1
    )
    token = device.evidence(device.boot(), NONCE)
    assert _appraise(device, _verifier(device, policy), token) == expected


def _attest(signer: bytes, extra: bytes) -> bytes:
    return (
        struct.pack(">IHH", 0xFF544347, 0x8018, len(signer)) + signer + struct.pack(">H", len(extra)) + extra
        + struct.pack(">QIIBQ", 123, 7, 2, 1, 0x2023) + struct.pack(">IHB", 1, 0x000B, 3) + bytes((0x11, 0x0C, 0))
        + struct.pack(">H", 32) + b"\xd1" * 32
    )  # fmt: skip


@pytest.mark.parametrize("signer", [0, 34, 66])
@pytest.mark.parametrize("extra", [0, 20, 32, 64])
def test_quotes_of_every_name_and_qualifying_data_length_parse_to_their_fields(signer: int, extra: int) -> None:
    """Check the TPMS_ATTEST layout is chosen per (name, extraData) length pair, never reused across pairs."""
    nonce = bytes(range(extra))
    info = parse_quote("tpm2-quote", _attest(b"n" * signer, nonce))
    assert (info.nonce, info.pcr_selection, info.pcr_digest, info.reset_count) == (
        nonce, (0, 4, 10, 11), b"\xd1" * 32, 7,
    )  # fmt: skip
