"""Privacy receipts: signed per batch, verified offline, tampering detected."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest

from iotguard.clock import FixedClock
from iotguard.errors import IntegrityError, MalformedError
from iotguard.keys import SoftwareKeyStore
from iotguard.privacy import (
    PrivacyPipeline,
    PrivacyReceipt,
    ReceiptBuilder,
    decode_receipt,
    verify_receipt,
    verify_receipt_covers,
)
from iotguard.privacy.receipt import RECEIPT_SIGNING_LABEL
from tests.privacy.conftest import HOUR


def _batch(
    make_pipeline: Callable[..., PrivacyPipeline], clock: FixedClock, tmp_path: object
) -> tuple[PrivacyReceipt, bytes, list[bytes], SoftwareKeyStore]:
    pipe = make_pipeline("thermo-1", "research")
    builder = ReceiptBuilder(pipe.device_id, pipe.contract, pipe.config_sha256)
    bodies = []
    for i in range(3):
        for r in pipe.process_all({"temperature": 20.0 + i, "humidity": 40.0, "co2": 800}).readings:
            builder.add(r.receipt_entry)
            bodies.append(cbor2.dumps({"ts": r.ts_ms, "f": dict(r.fields), "p": r.purpose}, canonical=True))
        clock.advance(HOUR)
    ks = SoftwareKeyStore(str(tmp_path))
    receipt = builder.seal(ks, clock.now())
    return receipt, ks.public_key(RECEIPT_SIGNING_LABEL), bodies, ks


def test_receipt_verifies_and_states_what_happened(
    make_pipeline: Callable[..., PrivacyPipeline], clock: FixedClock, tmp_path: object
) -> None:
    receipt, pub, bodies, _ = _batch(make_pipeline, clock, tmp_path)
    claims = verify_receipt(decode_receipt(receipt.encode()), pub)
    assert claims["model"] == "thermo-1" and claims["contract_version"] == 1
    assert claims["count"] == 6
    assert claims["purposes"]["research"]["transforms"] == {
        "humidity": ["ldp:piecewise:1"],
        "temperature": ["ldp:piecewise:1"],
    }
    assert claims["purposes"]["research"]["epsilon"] == pytest.approx(6.0)
    assert claims["purposes"]["heating_control"]["dropped"] == ["co2", "humidity"]
    assert claims["epsilon_spent"] == pytest.approx(6.0)
    verify_receipt_covers(claims, bodies)


def test_tampered_receipt_is_detected(
    make_pipeline: Callable[..., PrivacyPipeline], clock: FixedClock, tmp_path: object
) -> None:
    """Check for a forged receipt: lowering the privacy loss it admits breaks the signature."""
    receipt, pub, _, _ = _batch(make_pipeline, clock, tmp_path)
    body = cbor2.loads(receipt.body)
    body["epsilon_spent"] = 0.0
    forged = PrivacyReceipt(cbor2.dumps(body, canonical=True), receipt.signature)
    with pytest.raises(IntegrityError):
        verify_receipt(forged, pub)
    flipped = bytearray(receipt.encode())
    flipped[-1] ^= 1
    with pytest.raises(IntegrityError):
        verify_receipt(bytes(flipped), pub)


def test_receipt_from_another_key_is_rejected(
    make_pipeline: Callable[..., PrivacyPipeline], clock: FixedClock, tmp_path: object
) -> None:
    receipt, _, _, ks = _batch(make_pipeline, clock, tmp_path)
    other = ks.generate("other", "ed25519")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        verify_receipt(receipt, other)


def test_stored_readings_must_match_the_receipt(
    make_pipeline: Callable[..., PrivacyPipeline], clock: FixedClock, tmp_path: object
) -> None:
    receipt, pub, bodies, _ = _batch(make_pipeline, clock, tmp_path)
    claims = verify_receipt(receipt, pub)
    with pytest.raises(IntegrityError):
        verify_receipt_covers(claims, bodies[:-1])
    changed = list(bodies)
    changed[0] = cbor2.dumps({"ts": 0, "f": {"temperature": 99.0}, "p": "research"}, canonical=True)
    with pytest.raises(IntegrityError):
        verify_receipt_covers(claims, changed)


def test_malformed_receipts_rejected() -> None:
    with pytest.raises(MalformedError):
        decode_receipt(b"\x82\x41a")
    with pytest.raises(MalformedError):
        decode_receipt(cbor2.dumps([cbor2.dumps({"v": 1}), b"\x00" * 64]))
