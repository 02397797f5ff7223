"""Privacy receipts: signed statements of what a batch of readings went through.

For each batch the device signs, with an Ed25519 key held in its key
store, a receipt naming the data-contract version and digest, the hash of
its pipeline configuration, the transforms applied per purpose and field,
the fields dropped, the privacy loss spent (and the period total), and a
digest over the exact reading bodies sent. The hub stores it beside the
readings; an auditor later checks, offline with the device's public key,
that what the hub holds was minimised at the source.

Wire form: a CBOR array ``[body, signature]`` where ``body`` is the
canonical CBOR encoding of the receipt map and ``signature`` is
``Ed25519(key, "iotguard privacy receipt v1" || body)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotguard.clock import MAX_WIRE_TIMESTAMP, utc_from_wire
from iotguard.errors import ConfigError, IntegrityError, MalformedError
from iotguard.keys.keystore import KeyKind, KeyStore
from iotguard.privacy.contract import DataContract

__all__ = [
    "MAX_RECEIPT_BYTES",
    "RECEIPT_SIGNING_LABEL",
    "RECEIPT_VERSION",
    "PrivacyReceipt",
    "ReceiptBuilder",
    "ReceiptEntry",
    "decode_receipt",
    "reading_digest",
    "verify_receipt",
    "verify_receipt_covers",
]

RECEIPT_VERSION = 1
#: Key-store label of the device's receipt signing key.
RECEIPT_SIGNING_LABEL = "privacy-receipt"
#: Receipts larger than this are refused before decoding.
MAX_RECEIPT_BYTES = 64 * 1024
_DOMAIN = b"iotguard privacy receipt v1"
_BODY_KEYS = {
    "v",
    "type",
    "device",
    "model",
    "contract_version",
    "contract_sha256",
    "config_sha256",
    "issued_at",
    "first_ts",
    "last_ts",
    "count",
    "period",
    "epsilon_spent",
    "epsilon_period_total",
    "budget_epsilon",
    "purposes",
    "readings_sha256",
}


def reading_digest(ts_ms: int, fields: Mapping[str, Any], purpose: str) -> bytes:
    """SHA-256 of a reading's canonical body ``{"ts", "f", "p"}``.

    This is the hash of the bytes ``iotguard.wire.reading.encode_reading``
    produces, so the hub can recompute it from what it stores.
    """
    body = cbor2.dumps({"ts": ts_ms, "f": dict(fields), "p": purpose}, canonical=True)
    return hashlib.sha256(body).digest()


@dataclass(frozen=True)
class ReceiptEntry:
    """What the pipeline did to one reading (aggregated into a batch receipt)."""

    purpose: str
    ts_ms: int
    transforms: Mapping[str, tuple[str, ...]]
    dropped: tuple[str, ...]
    epsilon: float
    period: int
    period_total: float
    digest: bytes


@dataclass
class _PurposeTally:
    count: int = 0
    epsilon: float = 0.0
    transforms: dict[str, set[str]] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)


class ReceiptBuilder:
    """Collects the entries of one batch and signs the receipt.

    Args:
        device_id: The device's id.
        contract: The contract the pipeline enforced.
        config_sha256: The pipeline configuration hash
            (:attr:`iotguard.privacy.PrivacyPipeline.config_sha256`).
    """

    def __init__(self, device_id: str, contract: DataContract, config_sha256: bytes) -> None:
        self._device = device_id
        self._contract = contract
        self._config = config_sha256
        self._entries: list[ReceiptEntry] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: ReceiptEntry) -> None:
        """Add one reading's entry, in the order the readings are sent."""
        self._entries.append(entry)

    def body(self, issued_at: datetime) -> dict[str, Any]:
        """The receipt map for the entries so far.

        Raises:
            ConfigError: the batch is empty.
        """
        if not self._entries:
            raise ConfigError("a receipt needs at least one reading")
        tallies: dict[str, _PurposeTally] = {}
        h = hashlib.sha256()
        for e in self._entries:
            t = tallies.setdefault(e.purpose, _PurposeTally())
            t.count += 1
            t.epsilon += e.epsilon
            for f, kinds in e.transforms.items():
                t.transforms.setdefault(f, set()).update(kinds)
            t.dropped.update(e.dropped)
            h.update(e.digest)
        last = self._entries[-1]
        return {
            "v": RECEIPT_VERSION,
            "type": "privacy-receipt",
            "device": self._device,
            "model": self._contract.model,
            "contract_version": self._contract.version,
            "contract_sha256": self._contract.digest(),
            "config_sha256": self._config,
            "issued_at": int(issued_at.timestamp()),
            "first_ts": min(e.ts_ms for e in self._entries),
            "last_ts": max(e.ts_ms for e in self._entries),
            "count": len(self._entries),
            "period": last.period,
            "epsilon_spent": sum(e.epsilon for e in self._entries),
            "epsilon_period_total": max(e.period_total for e in self._entries if e.period == last.period),
            "budget_epsilon": self._contract.budget_epsilon,
            "purposes": {
                p: {
                    "count": t.count,
                    "epsilon": t.epsilon,
                    "transforms": {f: sorted(k) for f, k in sorted(t.transforms.items())},
                    "dropped": sorted(t.dropped),
                }
                for p, t in sorted(tallies.items())
            },
            "readings_sha256": h.digest(),
        }

    def seal(
        self, keystore: KeyStore, issued_at: datetime, *, label: str = RECEIPT_SIGNING_LABEL
    ) -> PrivacyReceipt:
        """Sign the batch's receipt with the key ``label`` (created on first use) and start a new batch.

        Raises:
            ConfigError: the batch is empty.
            KeyStoreError: the key store cannot sign.
        """
        body = cbor2.dumps(self.body(issued_at), canonical=True)
        if not keystore.has_key(label):
            keystore.generate(label, KeyKind.ED25519)
        signature = keystore.sign(label, _DOMAIN + body)
        self._entries = []
        return PrivacyReceipt(body, signature)


@dataclass(frozen=True)
class PrivacyReceipt:
    """A signed receipt. ``claims`` is only trustworthy after :func:`verify_receipt`."""

    body: bytes
    signature: bytes

    def encode(self) -> bytes:
        """Wire form: CBOR ``[body, signature]``."""
        return cbor2.dumps([self.body, self.signature], canonical=True)

    @property
    def claims(self) -> dict[str, Any]:
        """The decoded receipt map.

        Raises:
            MalformedError: the body is not a well-formed receipt map.
        """
        return _parse_body(self.body)


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        obj = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, RecursionError, MemoryError) as exc:
        raise MalformedError(f"receipt body is not valid CBOR: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or set(obj) != _BODY_KEYS:
        raise MalformedError("receipt body has missing or unknown keys")
    if obj["v"] != RECEIPT_VERSION or obj["type"] != "privacy-receipt":
        raise MalformedError("not a privacy receipt of a known version")
    for k in ("device", "model"):
        if not isinstance(obj[k], str):
            raise MalformedError(f"receipt {k} must be text")
    for k in ("contract_version", "count", "period"):
        if isinstance(obj[k], bool) or not isinstance(obj[k], int) or not 0 <= obj[k] < 2**53:
            raise MalformedError(f"receipt {k} must be a non-negative integer")
    utc_from_wire(obj["issued_at"], "receipt issued_at")
    for k in ("first_ts", "last_ts"):  # milliseconds
        if isinstance(obj[k], bool) or not isinstance(obj[k], int) or not 0 <= obj[k] < 1000 * (MAX_WIRE_TIMESTAMP + 1):
            raise MalformedError(f"receipt {k} must be a timestamp in milliseconds between 1970 and 9999")
    for k in ("epsilon_spent", "epsilon_period_total", "budget_epsilon"):
        v = obj[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise MalformedError(f"receipt {k} must be a non-negative number")
    for k in ("contract_sha256", "config_sha256", "readings_sha256"):
        if not isinstance(obj[k], bytes) or len(obj[k]) != 32:
            raise MalformedError(f"receipt {k} must be 32 bytes")
    if not isinstance(obj["purposes"], dict):
        raise MalformedError("receipt purposes must be a map")
    return obj


def decode_receipt(data: bytes) -> PrivacyReceipt:
    """Strictly decode a receipt's wire form (signature not yet checked).

    Raises:
        MalformedError: too large or not ``[body, signature]`` with a well-formed body.
    """
    if len(data) > MAX_RECEIPT_BYTES:
        raise MalformedError("receipt too large")
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, RecursionError, MemoryError) as exc:
        raise MalformedError(f"receipt is not valid CBOR: {type(exc).__name__}") from None
    if not (
        isinstance(obj, list)
        and len(obj) == 2
        and isinstance(obj[0], bytes)
        and isinstance(obj[1], bytes)
        and len(obj[1]) == 64
    ):
        raise MalformedError("receipt must be [body, 64-byte signature]")
    _parse_body(obj[0])
    return PrivacyReceipt(obj[0], obj[1])


def verify_receipt(receipt: PrivacyReceipt | bytes, public_key: bytes) -> dict[str, Any]:
    """Verify a receipt's signature and return its claims.

    Raises:
        IntegrityError: the signature does not verify under ``public_key``
            (a tampered body or a different signer).
        MalformedError: the receipt is not well-formed.
    """
    r = decode_receipt(receipt) if isinstance(receipt, bytes) else receipt
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(r.signature, _DOMAIN + r.body)
    except (InvalidSignature, ValueError):
        raise IntegrityError("privacy receipt signature does not verify") from None
    return _parse_body(r.body)


def verify_receipt_covers(claims: Mapping[str, Any], bodies: Sequence[bytes] | Iterable[bytes]) -> None:
    """Check that ``bodies`` (the stored reading bodies, in order) are exactly the receipt's batch.

    Raises:
        IntegrityError: the bodies differ from what the device signed for.
    """
    h = hashlib.sha256()
    n = 0
    for b in bodies:
        h.update(hashlib.sha256(b).digest())
        n += 1
    if n != claims["count"] or h.digest() != claims["readings_sha256"]:
        raise IntegrityError("stored readings do not match the privacy receipt")
