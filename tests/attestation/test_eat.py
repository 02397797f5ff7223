"""The evidence token's strict decoder (EAT claims in a COSE_Sign1)."""

from __future__ import annotations

import dataclasses

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pycose.headers import Algorithm
from pycose.keys import OKPKey
from pycose.messages.sign1message import Sign1Message

from iotguard.errors import MalformedError
from iotguard.wire.eat import (
    MAX_EVIDENCE_BYTES,
    TPM_QUOTE_ALGORITHM,
    BootEvent,
    EvidenceClaims,
    decode_evidence,
    encode_evidence,
    event_log_digest,
)

KEY = Ed25519PrivateKey.generate()
EVENTS = (BootEvent(0, b"\x11" * 32, "bootloader", "1.0.0"), BootEvent(4, b"\x22" * 32, "kernel", ""))
CLAIMS = EvidenceClaims(
    nonce=b"n" * 32,
    issued_at=1_800_000_000,
    ueid=b"\x01" + b"u" * 32,
    uptime=7,
    firmware_version="1.0.0",
    event_log=EVENTS,
    event_log_digest=event_log_digest(EVENTS),
    pcr_selection=(0, 4),
    quote_format="iotguard-sw-quote/1",
    quote_attest=b"attest",
    quote_signature=b"",
    privacy_config_hash=b"\x33" * 32,
    keystore_kind="software",
    keystore_tamper="",
)


def _token(claims: EvidenceClaims = CLAIMS) -> bytes:
    return encode_evidence(claims, "EdDSA", KEY.sign)


def test_round_trip_and_signature_covers_the_sig_structure() -> None:
    evidence = decode_evidence(_token())
    assert evidence.claims == CLAIMS
    assert evidence.algorithm == "EdDSA"
    KEY.public_key().verify(evidence.signature, evidence.to_be_signed)


def test_token_verifies_with_pycose_as_an_independent_cose_implementation() -> None:
    """pycose checks our Sig_structure: a token we decode verifies with its own COSE code."""
    raw = KEY.public_key().public_bytes_raw()
    outer = cbor2.loads(_token())
    message = Sign1Message(phdr={Algorithm: -8}, payload=outer.value[2])
    message._signature = outer.value[3]
    message.key = OKPKey(crv="Ed25519", x=raw)
    assert message.verify_signature()


def _replace_payload(token: bytes, payload: bytes) -> bytes:
    outer = cbor2.loads(token)
    return cbor2.dumps(cbor2.CBORTag(18, [outer.value[0], {}, payload, outer.value[3]]))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-1],
        # The mutations rebuild the COSE array around the token's parts.
        lambda t: cbor2.dumps(cbor2.loads(t).value),  # untagged
        lambda t: cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x26\x00", *cbor2.loads(t).value[1:]])),
        lambda t: cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x22", *cbor2.loads(t).value[1:]])),  # ES512
        lambda t: cbor2.dumps(cbor2.CBORTag(18, [cbor2.loads(t).value[0], {4: b"kid"}, *cbor2.loads(t).value[2:]])),
        lambda t: _replace_payload(
            t, cbor2.dumps({**{k: v for k, v in CLAIMS.to_cbor().items()}, 999: 1}, canonical=True)
        ),
        lambda t: _replace_payload(t, cbor2.dumps(CLAIMS.to_cbor(), canonical=False)[:-1] + b"\x00"),
        lambda t: _replace_payload(t, b"\xbf" + cbor2.dumps(CLAIMS.to_cbor(), canonical=True)[1:] + b"\xff"),
        lambda t: b"\x00" * (MAX_EVIDENCE_BYTES + 1),
    ],
)
def test_strict_decoder_refuses(mutate: object) -> None:
    with pytest.raises(MalformedError) as info:
        decode_evidence(mutate(_token()))  # type: ignore[operator]
    assert info.value.code == "malformed_evidence"


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": b""},
        {"nonce": b"n" * 65},
        {"event_log": ()},
        {"event_log": tuple(EVENTS[0] for _ in range(65))},
        {"event_log": (BootEvent(24, b"\x11" * 32, "bootloader", ""),)},
        {"event_log": (BootEvent(0, b"\x11" * 31, "bootloader", ""),)},
        {"event_log": (BootEvent(0, b"\x11" * 32, "boot loader", ""),)},
        {"pcr_selection": (4, 0)},
        {"pcr_selection": ()},
        {"firmware_version": ""},
        {"privacy_config_hash": b"\x00"},
        {"ueid": b"\x01"},
        {"issued_at": -1},
    ],
)
def test_claims_outside_the_profile_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(MalformedError):
        decode_evidence(_token(dataclasses.replace(CLAIMS, **change)))  # type: ignore[arg-type]


def _non_minimal_uint(value: int) -> bytes:
    return b"\x1a" + value.to_bytes(4, "big")  # a 4-byte head where a shorter one fits


@pytest.mark.parametrize("payload", [
    # every claim, but the map in reverse (not deterministic) key order
    lambda: cbor2.dumps(dict(reversed(list(CLAIMS.to_cbor().items())))),
    # the uptime (7) with a non-shortest integer head: same value, other bytes
    lambda: cbor2.dumps(CLAIMS.to_cbor(), canonical=True).replace(b"\x19\x01\x05\x07",
                                                                  b"\x19\x01\x05" + _non_minimal_uint(7)),
])
def test_claims_not_in_deterministic_encoding_are_refused(payload: object) -> None:
    """Only the deterministic encoding is accepted: the event-log digest is computed over the bytes received."""
    encoded = payload()  # type: ignore[operator]
    assert cbor2.loads(encoded) == cbor2.loads(cbor2.dumps(CLAIMS.to_cbor(), canonical=True))  # same claims
    with pytest.raises(MalformedError) as info:
        decode_evidence(_replace_payload(_token(), encoded))
    assert info.value.code == "malformed_evidence"


def test_event_log_sha256_is_the_digest_of_the_log_as_received() -> None:
    assert decode_evidence(_token()).event_log_sha256 == event_log_digest(EVENTS)


def test_quote_signed_token_splits_its_signature_into_r_s_and_the_tpms_attest() -> None:
    """ADR 0813: protected header {1: -75100}; the signature field is r || s followed by the TPMS_ATTEST."""
    attest = b"\xffTCG\x80\x18" + b"a" * 100
    token = encode_evidence(CLAIMS, TPM_QUOTE_ALGORITHM, lambda tbs: b"s" * 64 + attest)
    outer = cbor2.loads(token)
    assert outer.value[0] == b"\xa1\x01\x3a\x00\x01\x25\x5b"
    evidence = decode_evidence(token)
    assert evidence.algorithm == TPM_QUOTE_ALGORITHM
    assert (evidence.signature, evidence.signed_attest) == (b"s" * 64, attest)
    assert evidence.to_be_signed.startswith(b"\x84\x6aSignature1\x47\xa1\x01\x3a\x00\x01\x25\x5b\x40")
    assert decode_evidence(_token()).signed_attest == b""


@pytest.mark.parametrize("signature", [b"s" * 64, b"s" * 63, b"s" * (64 + 2049)])
def test_quote_signed_token_without_a_tpms_attest_or_too_long_is_malformed(signature: bytes) -> None:
    token = encode_evidence(CLAIMS, TPM_QUOTE_ALGORITHM, lambda tbs: signature)
    with pytest.raises(MalformedError) as info:
        decode_evidence(token)
    assert info.value.code == "malformed_evidence"


def test_claims_map_with_a_duplicate_key_is_refused() -> None:
    """A repeated claim (the last one would win in a decoder's dict) is not the deterministic encoding."""
    canonical = cbor2.dumps(CLAIMS.to_cbor(), canonical=True)
    assert canonical[0] == 0xAD  # a map of 13 claims
    duplicated = b"\xae" + canonical[1:] + cbor2.dumps(-75006) + cbor2.dumps("tamper")  # 14 entries, one key twice
    assert len(cbor2.loads(duplicated)) == 13
    with pytest.raises(MalformedError) as info:
        decode_evidence(_replace_payload(_token(), duplicated))
    assert info.value.code == "malformed_evidence"


def test_event_log_as_an_indefinite_length_array_is_refused() -> None:
    canonical = cbor2.dumps(CLAIMS.to_cbor(), canonical=True)
    log = cbor2.dumps([e.to_cbor() for e in EVENTS])
    indefinite = b"\x9f" + log[1:] + b"\xff"
    payload = canonical.replace(log, indefinite)
    assert cbor2.loads(payload) == cbor2.loads(canonical)
    with pytest.raises(MalformedError):
        decode_evidence(_replace_payload(_token(), payload))


@pytest.mark.parametrize("entry", [
    [True, b"\x11" * 32, "bootloader", ""],  # a boolean is not a PCR index
    ["0", b"\x11" * 32, "bootloader", ""],
    [0, "11" * 32, "bootloader", ""],
    [0, b"\x11" * 32, b"bootloader", ""],
    [0, b"\x11" * 32, "bootloader", None],
    [0, b"\x11" * 32, "bootloader", "1.0 beta"],
    [0, b"\x11" * 32, "bootloader"],
])
def test_event_log_entries_outside_the_profile_are_refused_every_time(entry: list[object]) -> None:
    """Entry checks come before the per-log cache, and a refused log is not remembered as accepted."""
    claims = {**CLAIMS.to_cbor(), -75000: [entry]}
    token = _replace_payload(_token(), cbor2.dumps(claims, canonical=True))
    for _ in range(2):
        with pytest.raises(MalformedError):
            decode_evidence(token)


@pytest.mark.parametrize("selection", [(0, 24), (0, 0, 4), (-1, 4)])
def test_pcr_selection_outside_the_profile_is_refused(selection: tuple[int, ...]) -> None:
    with pytest.raises(MalformedError):
        decode_evidence(_token(dataclasses.replace(CLAIMS, pcr_selection=selection)))


def test_each_event_log_gets_its_own_events_and_digest() -> None:
    """The per-log cache is keyed by the whole log: another log decodes to its own events and digest."""
    other = (BootEvent(0, b"\x11" * 32, "bootloader", "1.0.0"), BootEvent(4, b"\x23" * 32, "kernel", ""))
    first = decode_evidence(_token())
    second = decode_evidence(_token(dataclasses.replace(CLAIMS, event_log=other,
                                                        event_log_digest=event_log_digest(other))))
    assert (first.claims.event_log, first.event_log_sha256) == (EVENTS, event_log_digest(EVENTS))
    assert (second.claims.event_log, second.event_log_sha256) == (other, event_log_digest(other))
