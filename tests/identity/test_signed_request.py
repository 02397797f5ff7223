"""The one signed-request verifier: format, every refusal with its reason code."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.errors import (
    ExpiredError,
    IntegrityError,
    MalformedError,
    ReplayError,
    RevokedError,
    StaleError,
    UnknownDeviceError,
)
from iotguard.identity import (
    DeviceView,
    InMemorySeenNonces,
    SignedRequestLimits,
    parse_signed_request,
    sign_device_request,
    verify_signed_request,
)
from iotguard.identity.signed_request import encode_signed_request, signing_message

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key().public_bytes_raw()


def _view(status: str = "active", cert_days: float | None = 30.0, pub: bytes | None = PUB) -> DeviceView:
    return DeviceView("dev-1", status, pub, None if cert_days is None else NOW + timedelta(days=cert_days))


def _signed(action: str = "renew", body: dict | None = None, *, now: datetime = NOW, key=KEY,
            device_id: str = "dev-1", nonce: bytes | None = None) -> dict[str, str]:
    if body is None:
        body = {"transport_public_key": b"t" * 32} if action == "renew" else {}
    return sign_device_request(action, device_id, body, now=now, sign=key.sign, nonce=nonce).wire


def _verify(wire: dict[str, str], view: DeviceView | None = None, *, now: datetime = NOW,
            nonces: InMemorySeenNonces | None = None, action: str | None = None):
    parsed = parse_signed_request(wire["request"], wire["signature"])
    return verify_signed_request(parsed, view if view is not None else _view(), now,
                                 nonces=nonces or InMemorySeenNonces(), expected_action=action or parsed.action)


def test_valid_request_verifies_with_its_body_and_transcript() -> None:
    wire = _signed("tamper_report", {"reason": "enclosure opened"})
    verified = _verify(wire)
    assert verified.device_id == "dev-1" and verified.body == {"reason": "enclosure opened"}
    raw = base64.urlsafe_b64decode(wire["request"] + "=" * (-len(wire["request"]) % 4))
    assert verified.transcript == b"iotguard-device-request-v1:tamper_report\x00" + raw
    assert cbor2.loads(raw)["v"] == 1


def test_forged_signature_is_refused() -> None:
    wire = _signed(key=Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError) as exc:
        _verify(wire)
    assert exc.value.code == "forged"


def test_signature_for_one_action_does_not_verify_as_another() -> None:
    """Check for cross-action reuse: the action is in the signed domain prefix."""
    wire = _signed("renew")
    raw = base64.urlsafe_b64decode(wire["request"] + "=" * (-len(wire["request"]) % 4))
    as_receipt = encode_signed_request("upload_receipt", "dev-1", {"receipt": b"x"}, cbor2.loads(raw)["ts"],
                                       cbor2.loads(raw)["nonce"])
    moved = {"request": base64.urlsafe_b64encode(as_receipt).decode(), "signature": wire["signature"]}
    with pytest.raises(IntegrityError):
        _verify(moved)
    with pytest.raises(MalformedError):
        _verify(wire, action="rekey")


@pytest.mark.parametrize("skew", [timedelta(seconds=301), timedelta(seconds=-301), timedelta(days=-3)])
def test_stale_signed_request_refused(skew: timedelta) -> None:
    wire = _signed(now=NOW + skew)
    with pytest.raises(StaleError) as exc:
        _verify(wire)
    assert exc.value.code == "stale" and isinstance(exc.value, ReplayError)


def test_replayed_signed_request_refused() -> None:
    nonces = InMemorySeenNonces()
    wire = _signed()
    _verify(wire, nonces=nonces)
    with pytest.raises(ReplayError) as exc:
        _verify(wire, nonces=nonces, now=NOW + timedelta(seconds=5))
    assert exc.value.code == "replay"


def test_nonce_is_not_consumed_by_a_refused_request() -> None:
    nonces = InMemorySeenNonces()
    nonce = b"n" * 16
    with pytest.raises(IntegrityError):
        _verify(_signed(key=Ed25519PrivateKey.generate(), nonce=nonce), nonces=nonces)
    _verify(_signed(nonce=nonce), nonces=nonces)


@pytest.mark.parametrize("status", ["revoked", "decommissioned", "pending"])
def test_inactive_device_refused(status: str) -> None:
    with pytest.raises(RevokedError):
        _verify(_signed(), _view(status))
    with pytest.raises(RevokedError):
        _verify(_signed(), _view(status, pub=None))


def test_expired_certificate_refused_except_for_tamper_reports() -> None:
    for cert_days in (-0.001, None):
        with pytest.raises(ExpiredError) as exc:
            _verify(_signed("renew"), _view(cert_days=cert_days))
        assert exc.value.code == "expired"
    assert _verify(_signed("tamper_report", {"reason": "x"}), _view(cert_days=-5)).action == "tamper_report"


def test_unknown_device_refused() -> None:
    parsed = parse_signed_request(**_signed())
    with pytest.raises(UnknownDeviceError):
        verify_signed_request(parsed, None, NOW, nonces=InMemorySeenNonces())


def _raw_wire(obj: object) -> dict[str, str]:
    raw = cbor2.dumps(obj)
    sig = KEY.sign(signing_message("renew", raw))
    return {"request": base64.urlsafe_b64encode(raw).decode(), "signature": base64.urlsafe_b64encode(sig).decode()}


GOOD = {"v": 1, "action": "renew", "device_id": "dev-1", "ts": int(NOW.timestamp()), "nonce": b"n" * 16,
        "body": {"transport_public_key": b"t" * 32}}


@pytest.mark.parametrize("bad", [
    {**GOOD, "v": 2}, {**GOOD, "action": "delete_everything"}, {**GOOD, "device_id": "../x"},
    {**GOOD, "ts": -1}, {**GOOD, "ts": 1.5}, {**GOOD, "nonce": b"short"}, {**GOOD, "body": {"extra": 1}},
    {k: v for k, v in GOOD.items() if k != "nonce"}, {**GOOD, "more": 1}, [1, 2, 3], "text",
    {**GOOD, "action": "rekey", "body": {"epoch": 1, "kex_public_key": b"k" * 32, "suites": ["a"]}},
    {**GOOD, "action": "rekey", "body": {"epoch": 2, "kex_public_key": b"k" * 31, "suites": ["a"]}},
    {**GOOD, "action": "rekey", "body": {"epoch": 2, "kex_public_key": b"k" * 32, "suites": []}},
    {**GOOD, "action": "tamper_report", "body": {"reason": "x" * 129}},
])
def test_malformed_requests_are_refused(bad: object) -> None:
    with pytest.raises(MalformedError):
        parse_signed_request(**_raw_wire(bad))


def test_non_canonical_encoding_is_refused() -> None:
    """One request, one encoding: a re-ordered map would sign differently."""
    raw = b"\xa6" + b"".join(cbor2.dumps(k) + cbor2.dumps(GOOD[k]) for k in ["v", "action", "device_id", "ts",
                                                                            "nonce", "body"][::-1])
    assert cbor2.loads(raw) == GOOD
    wire = {"request": base64.urlsafe_b64encode(raw).decode(),
            "signature": base64.urlsafe_b64encode(KEY.sign(signing_message("renew", raw))).decode()}
    with pytest.raises(MalformedError):
        parse_signed_request(**wire)


@pytest.mark.parametrize("request_b64,signature", [
    ("not base64 !!", "A" * 86), (None, "A" * 86), ("A" * 200_000, "A" * 86), ("oA", "short"),
    (base64.urlsafe_b64encode(b"\xff\xff").decode(), "A" * 86),
])
def test_garbage_is_malformed_never_a_crash(request_b64: object, signature: str) -> None:
    with pytest.raises(MalformedError):
        parse_signed_request(request_b64, signature)


def test_limits_are_bounded() -> None:
    with pytest.raises(ValueError):
        SignedRequestLimits(max_clock_skew_s=0)
    with pytest.raises(ValueError):
        SignedRequestLimits(max_request_bytes=10**9)


def test_documented_example() -> None:
    """The byte-by-byte example of docs/wire.md §10, for firmware implementers."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    out = sign_device_request("tamper_report", "dev-1", {"reason": "lid"}, now=datetime.fromtimestamp(1767225600, UTC),
                              sign=key.sign, nonce=bytes(range(16)))
    raw = base64.urlsafe_b64decode(out.wire["request"] + "=" * (-len(out.wire["request"]) % 4))
    assert raw.hex() == (
        "a66176016274731a6955b90064626f6479a166726561736f6e636c6964656e6f6e636550000102030405060708090a0b0c0d"
        "0e0f66616374696f6e6d74616d7065725f7265706f7274696465766963655f6964656465762d31")
    assert out.transcript == b"iotguard-device-request-v1:tamper_report\x00" + raw
    sig = base64.urlsafe_b64decode(out.wire["signature"] + "==")
    assert sig.hex() == ("d8189cc6174f9203300f98c4d79a99201e51b21c3a874a079193681af74de3bc"
                         "344583e91726631d90e0954921de12ce0806c58f3b6533a357ba7f6c85bb5f00")
    view = DeviceView("dev-1", "active", key.public_key().public_bytes_raw(), None)
    verified = verify_signed_request(parse_signed_request(**out.wire), view,
                                     datetime.fromtimestamp(1767225600, UTC), nonces=InMemorySeenNonces())
    assert verified.body == {"reason": "lid"}


def test_an_optional_field_may_be_left_out_but_required_unknown_and_bad_ones_are_refused() -> None:
    assert _verify(_signed("learn_task", {"run_id": "run-1"})).body == {"run_id": "run-1"}  # an older agent
    full = {"run_id": "run-1", "accepts": ["q8", "none"], "max_update_bytes": 4096}
    assert _verify(_signed("learn_task", full)).body == full
    for body in ({"accepts": ["q8"]}, {"run_id": "r", "extra": 1}, {"run_id": "r", "accepts": []},
                 {"run_id": "r", "accepts": ["a", "b", "c", "d", "e"]}, {"run_id": "r", "max_update_bytes": -1}):
        with pytest.raises(MalformedError):  # the encoder and the verifier run the same check
            _verify(_signed("learn_task", body))
