"""Homomorphic-sum rounds: devices send packed Paillier ciphertexts once; the hub adds them (no I/O).

A round is one phase: each invited device polls (``he_poll``: the public key
and the packing layout) and sends its encrypted vector once (``he_submit``,
canonical CBOR ``{"ciphertexts": [bytes, ...]}``). When every device has
sent, or at the deadline, the hub multiplies the ciphertexts
(:func:`~iotguard.analytics.homomorphic.add_ciphertexts`) and applies its
key share; the independent decryptor applies the other share to the
encrypted sum and combines (:func:`~iotguard.analytics.homomorphic.combine_partials`).
The hub never holds a plaintext value, and its key share alone opens nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from iotguard.analytics.homomorphic import KeyShare, PaillierPublicKey, add_ciphertexts
from iotguard.analytics.secagg import AggregationError
from iotguard.analytics.secagg_round import decode_message, encode_message
from iotguard.errors import ConfigError, MalformedError

__all__ = ["HeRound", "HeRoundSpec", "encrypt_for_round"]


@dataclass(frozen=True)
class HeRoundSpec:
    """The invited devices, the vector length, the public key and layout, the hub's key share, the deadline."""

    devices: tuple[str, ...]
    dims: int
    public_key: PaillierPublicKey
    hub_share: KeyShare
    timeout: timedelta = timedelta(minutes=5)

    def validate(self) -> None:
        """Raises :class:`ConfigError` with the reason."""
        self.public_key.validate()
        if not 2 <= len(self.devices) <= self.public_key.max_summands or len(set(self.devices)) != len(self.devices):
            raise ConfigError("an HE round needs 2..max_summands distinct devices")
        if self.hub_share.n != self.public_key.n:
            raise ConfigError("the hub's key share is for another key")
        if not 1 <= self.ciphertexts() * self.ciphertext_bytes() <= 60_000:
            raise ConfigError("the encrypted vector must fit one device request (60,000 bytes)")

    def ciphertexts(self) -> int:
        return math.ceil(self.dims / self.public_key.slots)

    def ciphertext_bytes(self) -> int:
        return (self.public_key.n2.bit_length() + 7) // 8


@dataclass
class HeRound:
    """The hub's side of one homomorphic-sum round."""

    spec: HeRoundSpec
    started: datetime
    phase: str = "submit"
    received: dict[str, list[int]] = field(default_factory=dict)
    encrypted_sum: list[int] = field(default_factory=list)
    hub_partial: list[int] = field(default_factory=list)
    reason: str = ""

    def tick(self, now: datetime) -> None:
        """Close the round when every device has sent or the deadline passed."""
        if self.phase == "submit" and (len(self.received) == len(self.spec.devices)
                                       or now - self.started >= self.spec.timeout):
            if not self.received:
                self.phase, self.reason = "failed", "no_submissions"
                return
            try:
                self.encrypted_sum = add_ciphertexts(self.spec.public_key, list(self.received.values()))
            except MalformedError:
                self.phase, self.reason = "failed", "ciphertext_malformed"
                return
            self.hub_partial = self.spec.hub_share.partial_decrypt(self.encrypted_sum)
            self.phase = "done"

    def poll(self, device_id: str, now: datetime) -> dict[str, Any]:
        self.tick(now)
        pk = self.spec.public_key
        if self.phase != "submit" or device_id not in self.spec.devices or device_id in self.received:
            return {"phase": self.phase}
        return {"phase": "submit", "n": pk.n.to_bytes(pk.n.bit_length() // 8, "big"), "value_bits": pk.value_bits,
                "max_summands": pk.max_summands, "dims": self.spec.dims}

    def submit(self, device_id: str, message: bytes, now: datetime) -> None:
        """A device's encrypted vector.

        Raises:
            AggregationError: ``wrong_phase``, ``not_in_round``, ``message_duplicate``,
                ``ciphertext_malformed`` (count, size or range), ``message_malformed``.
        """
        self.tick(now)
        if self.phase != "submit":
            raise AggregationError("wrong_phase", f"round is {self.phase}")
        if device_id not in self.spec.devices:
            raise AggregationError("not_in_round", device_id)
        if device_id in self.received:
            raise AggregationError("message_duplicate", "ciphertexts already sent")
        items = decode_message(message, {"ciphertexts"})["ciphertexts"]
        size = self.spec.ciphertext_bytes()
        if not isinstance(items, list) or len(items) != self.spec.ciphertexts() or not all(
                isinstance(c, bytes) and len(c) == size for c in items):
            raise AggregationError("ciphertext_malformed", f"expected {self.spec.ciphertexts()} x {size} bytes")
        cts = [int.from_bytes(c, "big") for c in items]
        try:
            for c in cts:
                self.spec.public_key.check_ciphertext(c)
        except MalformedError:
            raise AggregationError("ciphertext_malformed", "not an element of Z_{n^2}") from None
        self.received[device_id] = cts
        self.tick(now)

    def result(self) -> dict[str, Any]:
        """Phase and counts; once done the encrypted sum and the hub's partial decryption (hex)."""
        out: dict[str, Any] = {"phase": self.phase, "kind": "he", "invited": len(self.spec.devices),
                               "submitted": len(self.received)}
        if self.reason:
            out["reason"] = self.reason
        if self.phase == "done":
            out["encrypted_sum"] = [format(c, "x") for c in self.encrypted_sum]
            out["hub_partial"] = [format(c, "x") for c in self.hub_partial]
        return out


def encrypt_for_round(poll: dict[str, Any], values: list[int]) -> bytes:
    """The device's ``he_submit`` message for a ``he_poll`` reply.

    Raises:
        AggregationError: ``message_malformed`` (a bad poll or a vector of the wrong length).
    """
    n_raw, vb, ms, dims = poll.get("n"), poll.get("value_bits"), poll.get("max_summands"), poll.get("dims")
    if not (isinstance(n_raw, bytes) and isinstance(vb, int) and isinstance(ms, int) and dims == len(values)):
        raise AggregationError("message_malformed", "HE poll")
    pk = PaillierPublicKey(int.from_bytes(n_raw, "big"), vb, ms)
    try:
        pk.validate()
    except ConfigError:
        raise AggregationError("message_malformed", "HE public key") from None
    size = (pk.n2.bit_length() + 7) // 8
    return encode_message({"ciphertexts": [c.to_bytes(size, "big") for c in pk.encrypt_vector(values)]})
