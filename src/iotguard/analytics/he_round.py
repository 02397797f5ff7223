"""Homomorphic-sum rounds: devices send Ring-LWE ciphertexts once, in parts; the hub adds them (no I/O).

A round is one phase. Each invited device polls (``he_poll`` with no
message: the layout, the public polynomial's seed and which parts the hub
still needs; with ``{"key_row": j}``: row ``j`` of the public key ``b``),
encrypts its vector (:func:`encrypt_for_round`) and sends every part of
its ciphertexts (``he_submit``, canonical CBOR ``{"part": i, "words":
bytes, "upload": id}``: one residue row of one polynomial, ``N``
little-endian 32-bit words, so each message fits one device request; every
part of one encryption carries its random upload id, and a part of a new
upload discards the parts of an earlier one, so a device that restarted and
encrypted afresh never mixes two encryptions). A device counts once all
its parts are in; the hub then adds its ciphertexts to the running sum and
drops them. When every device has sent, or at the deadline, the hub applies
its key share to the encrypted sum (flooded with noise derived from its
share and that sum, so every hub process replaying the round computes the
same partial); the independent decryptor applies the other share
(:func:`open_result`). A device that sent only some parts is left out. The
hub never holds a plaintext value, and its key share alone opens nothing.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from iotguard.analytics.rlwe import (
    PRIMES,
    RING_DEGREE,
    SEED_BYTES,
    RlweKeyShare,
    RlweParams,
    RlwePublicKey,
    combine_partials,
    keygen_share,
)
from iotguard.analytics.secagg import AggregationError
from iotguard.analytics.secagg_round import decode_message, encode_message
from iotguard.errors import ConfigError, MalformedError

__all__ = ["MAX_HE_DIMS", "UPLOAD_ID_BYTES", "HeRound", "HeRoundSpec", "encrypt_for_round", "new_decryptor_share",
           "open_result"]

#: Bytes of the random id a device gives one encryption of its vector (all its parts carry it).
UPLOAD_ID_BYTES = 16
#: Most values in one HE round (eight ciphertexts).
MAX_HE_DIMS = 8 * RING_DEGREE
_ROWS = 2 * len(PRIMES)  # parts per ciphertext: (c0, c1) x residues
_ROW_BYTES = 4 * RING_DEGREE
_P32 = np.array(PRIMES, dtype=np.uint32)


@dataclass(frozen=True, eq=False)
class HeRoundSpec:
    """The invited devices, the vector length, the joint public key, the hub's key share, the deadline."""

    devices: tuple[str, ...]
    dims: int
    public_key: RlwePublicKey
    hub_share: RlweKeyShare
    timeout: timedelta = timedelta(minutes=5)
    #: Fewest complete uploads the hub decrypts a sum of (0: two thirds of the invited devices, at least 2).
    min_devices: int = 0

    @property
    def quorum(self) -> int:
        return self.min_devices or max(2, math.ceil(2 * len(self.devices) / 3))

    def validate(self) -> None:
        """Raises :class:`ConfigError` with the reason."""
        self.public_key.validate()
        if self.min_devices and not 2 <= self.min_devices <= len(self.devices):
            raise ConfigError("min_devices must be 2..the invited devices (a sum of one is that device's value)")
        if not 2 <= len(self.devices) <= self.public_key.params.max_summands or len(set(self.devices)) != len(
                self.devices):
            raise ConfigError("an HE round needs 2..max_summands distinct devices")
        if self.hub_share.seed != self.public_key.seed:
            raise ConfigError("the hub's key share is for another key")
        if not 1 <= self.dims <= MAX_HE_DIMS:
            raise ConfigError(f"dims must be 1..{MAX_HE_DIMS}")

    def ciphertexts(self) -> int:
        return math.ceil(self.dims / RING_DEGREE)

    def parts(self) -> int:
        return self.ciphertexts() * _ROWS


@dataclass
class HeRound:
    """The hub's side of one homomorphic-sum round."""

    spec: HeRoundSpec
    started: datetime
    phase: str = "submit"
    pending: dict[str, tuple[bytes, dict[int, npt.NDArray[np.uint32]]]] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    total: npt.NDArray[np.uint64] | None = None
    encrypted_sum: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    hub_partial: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    reason: str = ""

    def tick(self, now: datetime) -> None:
        """Close the round when every device has sent or the deadline passed."""
        if self.phase == "submit" and (len(self.received) == len(self.spec.devices)
                                       or now - self.started >= self.spec.timeout):
            self.pending.clear()
            if self.total is None or len(self.received) < self.spec.quorum:
                # a sum of too few devices is (nearly) one device's value: never decrypted
                self.phase, self.reason = "failed", "no_submissions" if self.total is None else "too_few_submissions"
                self.total = None
                return
            p = np.array(PRIMES, dtype=np.uint64)[None, None, :, None]
            summed = self.total % p
            self.encrypted_sum = list(summed)
            digest = hashlib.sha256(b"iotguard-he-flood|" + self.spec.hub_share.to_bytes() + summed.tobytes())
            self.hub_partial = self.spec.hub_share.partial_decrypt(self.spec.public_key.params, self.encrypted_sum,
                                                                   flood_seed=digest.digest())
            self.total = None
            self.phase = "done"

    def poll(self, device_id: str, now: datetime, message: bytes = b"") -> dict[str, Any]:
        """The layout and the parts still missing; or, asked for ``key_row``, one row of the public key.

        Raises:
            AggregationError: ``message_malformed`` (a key row that does not exist).
        """
        self.tick(now)
        if self.phase != "submit" or device_id not in self.spec.devices or device_id in self.received:
            return {"phase": self.phase}
        pk = self.spec.public_key
        if message:
            row = decode_message(message, {"key_row"})["key_row"]
            if not isinstance(row, int) or not 0 <= row < len(PRIMES):
                raise AggregationError("message_malformed", "key_row")
            return {"phase": "submit", "key_row": row, "words": pk.b_hat[row].astype("<u4").tobytes()}
        upload, have = self.pending.get(device_id, (b"", {}))
        return {"phase": "submit", "seed": pk.seed, "value_bits": pk.params.value_bits,
                "max_summands": pk.params.max_summands, "dims": self.spec.dims, "key_rows": len(PRIMES),
                "upload": upload, "missing": [i for i in range(self.spec.parts()) if i not in have]}

    def submit(self, device_id: str, message: bytes, now: datetime) -> None:
        """One part of a device's ciphertexts.

        Raises:
            AggregationError: ``wrong_phase``, ``not_in_round``, ``message_duplicate``,
                ``ciphertext_malformed`` (part index, size or a word not reduced), ``message_malformed``.
        """
        self.tick(now)
        if self.phase != "submit":
            raise AggregationError("wrong_phase", f"round is {self.phase}")
        if device_id not in self.spec.devices:
            raise AggregationError("not_in_round", device_id)
        if device_id in self.received:
            raise AggregationError("message_duplicate", "ciphertexts already sent")
        msg = decode_message(message, {"upload", "part", "words"})
        upload, part, words = msg["upload"], msg["part"], msg["words"]
        if not isinstance(upload, bytes) or len(upload) != UPLOAD_ID_BYTES:
            raise AggregationError("message_malformed", f"upload is {UPLOAD_ID_BYTES} bytes")
        if not isinstance(part, int) or not 0 <= part < self.spec.parts():
            raise AggregationError("ciphertext_malformed", f"part must be 0..{self.spec.parts() - 1}")
        if not isinstance(words, bytes) or len(words) != _ROW_BYTES:
            raise AggregationError("ciphertext_malformed", f"a part is {_ROW_BYTES} bytes")
        row = np.frombuffer(words, dtype="<u4")
        if bool((row >= _P32[part % len(PRIMES)]).any()):
            raise AggregationError("ciphertext_malformed", "a word is not reduced modulo its prime")
        current, have = self.pending.get(device_id, (upload, {}))
        if current != upload:  # the device encrypted afresh (a restart): its earlier parts must not mix in
            have = {}
        self.pending[device_id] = (upload, have)
        if part in have:
            raise AggregationError("message_duplicate", f"part {part} already sent")
        have[part] = row
        if len(have) == self.spec.parts():
            if self.total is None:
                self.total = np.zeros((self.spec.ciphertexts(), 2, len(PRIMES), RING_DEGREE), dtype=np.uint64)
            flat = self.total.reshape(self.spec.parts(), RING_DEGREE)
            for i, r in have.items():  # at most 2^16 devices of words < 2^31: no overflow before the reduction
                np.add(flat[i], r, out=flat[i])
            del self.pending[device_id]
            self.received.append(device_id)
        self.tick(now)

    def result(self) -> dict[str, Any]:
        """Phase and counts; once done the encrypted sum and the hub's partial decryption (base64)."""
        out: dict[str, Any] = {"phase": self.phase, "kind": "he", "invited": len(self.spec.devices),
                               "submitted": len(self.received), "dims": self.spec.dims}
        if self.reason:
            out["reason"] = self.reason
        if self.phase == "done":
            out["encrypted_sum"] = [_b64(c.astype("<u4").tobytes()) for c in self.encrypted_sum]
            out["hub_partial"] = [_b64(c.astype("<u4").tobytes()) for c in self.hub_partial]
        return out


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key_from_poll(poll: dict[str, Any], key_rows: list[bytes]) -> RlwePublicKey:
    seed, vb, ms = poll.get("seed"), poll.get("value_bits"), poll.get("max_summands")
    if not (isinstance(seed, bytes) and isinstance(vb, int) and isinstance(ms, int)):
        raise AggregationError("message_malformed", "HE poll")
    try:
        pk = RlwePublicKey.from_bytes(RlweParams(vb, ms), seed, b"".join(key_rows))
        pk.validate()
    except (ConfigError, MalformedError):
        raise AggregationError("message_malformed", "HE public key") from None
    return pk


def encrypt_for_round(poll: dict[str, Any], key_rows: list[bytes], values: list[int]) -> tuple[bytes, list[bytes]]:
    """The device's ``he_submit`` messages (one per part, one fresh upload id) for a ``he_poll`` reply and key rows.

    Raises:
        AggregationError: ``message_malformed`` (a bad poll or key, or a vector of the wrong length).
    """
    if poll.get("dims") != len(values):
        raise AggregationError("message_malformed", "the vector's length is not the round's")
    pk = _key_from_poll(poll, key_rows)
    try:
        cts = pk.encrypt_vector(values)
    except ConfigError as exc:
        raise AggregationError("message_malformed", str(exc)) from None
    rows = [ct[j * _ROW_BYTES:(j + 1) * _ROW_BYTES] for ct in cts for j in range(_ROWS)]
    upload = secrets.token_bytes(UPLOAD_ID_BYTES)
    return upload, [encode_message({"upload": upload, "part": i, "words": r}) for i, r in enumerate(rows)]


def new_decryptor_share() -> tuple[RlweKeyShare, dict[str, str]]:
    """The independent decryptor's key share for a fresh public polynomial, and what an HE round is started with:
    ``seed`` (hex) and the share's public part ``decryptor_part`` (base64, ADR 0418). The share never leaves the
    decryptor."""
    seed = secrets.token_bytes(SEED_BYTES)
    share, part = keygen_share("decryptor", seed)
    return share, {"seed": seed.hex(), "decryptor_part": base64.b64encode(part.astype("<u4").tobytes()).decode()}


def open_result(result: dict[str, Any], params: RlweParams, decryptor: RlweKeyShare) -> list[int]:
    """The decryptor's side: the sum from a done round's result, with its own key share.

    Raises:
        MalformedError: the result is malformed or the shares do not combine.
    """
    try:
        enc = [np.frombuffer(base64.b64decode(s, validate=True), dtype="<u4").astype(np.uint64).reshape(
            2, len(PRIMES), RING_DEGREE) for s in result["encrypted_sum"]]
        hub = [np.frombuffer(base64.b64decode(s, validate=True), dtype="<u4").astype(np.uint64).reshape(
            len(PRIMES), RING_DEGREE) for s in result["hub_partial"]]
        dims = int(result["dims"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedError(f"not a done HE round's result: {exc}") from None
    if len(enc) != len(hub) or not 1 <= dims <= len(enc) * RING_DEGREE:
        raise MalformedError("not a done HE round's result")
    p = np.array(PRIMES, dtype=np.uint64)[:, None]
    if any(bool((c >= p).any()) for c in enc) or any(bool((h >= p).any()) for h in hub):
        raise MalformedError("a word is not reduced modulo its prime")
    return combine_partials(params, enc, [hub, decryptor.partial_decrypt(params, enc)], dims)
