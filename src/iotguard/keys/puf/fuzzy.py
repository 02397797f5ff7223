"""Fuzzy extractor: stable keys from noisy PUF responses (code-offset construction).

Enrollment (``generate``) picks random message bits ``s``, encodes them with a
concatenated code — an outer BCH code (bchlib) whose codeword bits are each
repeated ``r`` times (inner repetition code) — and publishes the *helper
data* ``offset = w XOR C(s)`` beside a short key-check value. The key is
``HKDF(w, salt=SHA-256(offset))``.

Reconstruction (``reproduce``) takes a fresh noisy read ``w'``:
``offset XOR w' = C(s) XOR e``; a majority vote per repetition group removes
most errors, BCH decoding the rest, re-encoding gives ``C(s)`` and therefore
``w = offset XOR C(s)`` exactly, and the key follows. A failed reconstruction
is detected by the key-check value and raises — it never yields a wrong key.

The helper data is public: it reveals at most the code redundancy
(``n - k`` bits) about ``w``. The default parameters (``r = 7``, BCH with
``m = 8, t = 16`` over 128 data + 124 parity bits, two blocks, 3,528 response
bits, 256 message bits) fail less than once in 10^7 reconstructions at a
15 % bit-error rate; see :func:`key_failure_probability` and
:mod:`iotguard.keys.puf.analysis`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import cached_property
from math import comb

import bchlib
import cbor2
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotguard.errors import KeyStoreError, MalformedError

__all__ = [
    "FuzzyExtractor",
    "FuzzyExtractorParameters",
    "HelperData",
    "block_failure_probability",
    "key_failure_probability",
    "repetition_error_probability",
]

Bits = npt.NDArray[np.uint8]

_KEY_INFO = b"iotguard puf fuzzy extractor key v1\0"
_CHECK_INFO = b"iotguard puf key check v1"
_CHECK_BYTES = 16
_HELPER_KEYS = frozenset({"v", "r", "m", "t", "d", "b", "o", "c"})
#: Largest serialized helper data accepted (bytes).
MAX_HELPER_BYTES = 64 * 1024
_MAX_REPETITION = 63
_MAX_BLOCKS = 64
#: Galois field orders bchlib supports.
_BCH_M_RANGE = (5, 15)


@dataclass(frozen=True)
class FuzzyExtractorParameters:
    """Code parameters of the concatenated repetition + BCH code.

    Attributes:
        repetition: Inner repetition length ``r`` (odd).
        bch_m: BCH Galois field order (codewords up to ``2^m - 1`` bits).
        bch_t: BCH correction capability (bit errors per block).
        bch_data_bytes: Message bytes per BCH block.
        blocks: Number of BCH blocks.
    """

    repetition: int = 7
    bch_m: int = 8
    bch_t: int = 16
    bch_data_bytes: int = 16
    blocks: int = 2

    def __post_init__(self) -> None:
        # Bounds first, in Python: bchlib raises RuntimeError or OverflowError
        # on parameters it cannot handle, and helper data arrives as bytes.
        if not 1 <= self.repetition <= _MAX_REPETITION or self.repetition % 2 == 0:
            raise ValueError(f"the repetition length must be odd and in 1..{_MAX_REPETITION}")
        if not _BCH_M_RANGE[0] <= self.bch_m <= _BCH_M_RANGE[1]:
            raise ValueError(f"the BCH field order must be in {_BCH_M_RANGE[0]}..{_BCH_M_RANGE[1]}")
        if not 1 <= self.blocks <= _MAX_BLOCKS or self.bch_data_bytes < 1 or self.bch_t < 1:
            raise ValueError("blocks, data bytes and t must be positive and bounded")
        try:
            ecc_bits = self.ecc_bits
        except (RuntimeError, OverflowError) as exc:
            raise ValueError(f"BCH parameters refused: {exc}") from None
        if 8 * self.bch_data_bytes + ecc_bits > (1 << self.bch_m) - 1:
            raise ValueError("BCH block does not fit the field order")

    @cached_property
    def ecc_bits(self) -> int:
        """Parity bits per BCH block."""
        return int(bchlib.BCH(self.bch_t, m=self.bch_m).ecc_bits)

    @property
    def codeword_bits(self) -> int:
        """Significant bits per BCH codeword (data + parity)."""
        return 8 * self.bch_data_bytes + self.ecc_bits

    @property
    def response_bits(self) -> int:
        """PUF response bits consumed."""
        return self.blocks * self.codeword_bits * self.repetition

    @property
    def message_bits(self) -> int:
        """Bits of the random message ``s`` (upper bound on the key's entropy)."""
        return 8 * self.bch_data_bytes * self.blocks


def repetition_error_probability(ber: float, repetition: int) -> float:
    """Probability that majority decoding of one repetition group is wrong at bit-error rate ``ber``."""
    return sum(
        comb(repetition, k) * ber**k * (1 - ber) ** (repetition - k)
        for k in range(repetition // 2 + 1, repetition + 1)
    )


def block_failure_probability(inner_error: float, codeword_bits: int, t: int) -> float:
    """Probability that a BCH block sees more than ``t`` errors after the inner code."""
    below = sum(
        comb(codeword_bits, k) * inner_error**k * (1 - inner_error) ** (codeword_bits - k)
        for k in range(t + 1)
    )
    tail = sum(
        comb(codeword_bits, k) * inner_error**k * (1 - inner_error) ** (codeword_bits - k)
        for k in range(t + 1, codeword_bits + 1)
    )
    # Summing the small tail directly keeps precision far below 1e-16.
    return tail if tail < 0.5 else 1.0 - below


def key_failure_probability(ber: float, params: FuzzyExtractorParameters | None = None) -> float:
    """Analytic probability that one reconstruction fails at i.i.d. bit-error rate ``ber``."""
    p = params or FuzzyExtractorParameters()
    inner = repetition_error_probability(ber, p.repetition)
    block = block_failure_probability(inner, p.codeword_bits, p.bch_t)
    return float(-np.expm1(p.blocks * np.log1p(-block))) if block < 1 else 1.0


@dataclass(frozen=True)
class HelperData:
    """Public helper data of one enrollment.

    Attributes:
        params: The code parameters used.
        offset: ``w XOR C(s)``, packed bits.
        check: Key-check value (detects a failed reconstruction).
    """

    params: FuzzyExtractorParameters
    offset: bytes
    check: bytes

    def to_bytes(self) -> bytes:
        """Canonical CBOR encoding."""
        p = self.params
        return cbor2.dumps(
            {
                "v": 1,
                "r": p.repetition,
                "m": p.bch_m,
                "t": p.bch_t,
                "d": p.bch_data_bytes,
                "b": p.blocks,
                "o": self.offset,
                "c": self.check,
            },
            canonical=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, expected: FuzzyExtractorParameters | None = None) -> HelperData:
        """Parse helper data strictly.

        Args:
            data: The serialized helper data.
            expected: When given, the code parameters the caller uses; helper
                data stating others is refused before any of its parameters
                reach the BCH library.

        Raises:
            MalformedError: wrong size, schema or parameters.
        """
        if len(data) > MAX_HELPER_BYTES:
            raise MalformedError("helper data too large")
        try:
            obj = cbor2.loads(data)
            if not isinstance(obj, dict) or obj.get("v") != 1 or set(obj) != _HELPER_KEYS:
                raise ValueError("unknown helper data version or keys")
            stated = tuple(obj[k] for k in ("r", "m", "t", "d", "b"))
            if any(isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**16 for v in stated):
                raise ValueError("code parameters must be small positive integers")
            if expected is not None:
                if stated != (expected.repetition, expected.bch_m, expected.bch_t, expected.bch_data_bytes,
                              expected.blocks):
                    raise ValueError("helper data was made with other code parameters")
                params = expected
            else:
                params = FuzzyExtractorParameters(*stated)
            offset, check = obj["o"], obj["c"]
            if not isinstance(offset, bytes) or not isinstance(check, bytes):
                raise ValueError("offset and check must be bytes")
        except (ValueError, KeyError, TypeError, RecursionError, cbor2.CBORDecodeError) as exc:
            raise MalformedError(f"bad helper data: {exc}") from None
        if len(offset) != (params.response_bits + 7) // 8 or len(check) != _CHECK_BYTES:
            raise MalformedError("helper data has the wrong length")
        return cls(params, offset, check)


class FuzzyExtractor:
    """Code-offset fuzzy extractor with a repetition + BCH concatenated code.

    Args:
        params: Code parameters (defaults meet 1e-6 at 15 % bit errors).
    """

    def __init__(self, params: FuzzyExtractorParameters | None = None) -> None:
        self.params = params or FuzzyExtractorParameters()
        self._bch = bchlib.BCH(self.params.bch_t, m=self.params.bch_m)

    def __repr__(self) -> str:
        return f"FuzzyExtractor({self.params})"

    # -- coding --------------------------------------------------------------

    def encode(self, message: bytes) -> Bits:
        """Codeword bits ``C(s)`` (``response_bits`` long) of the message ``s``."""
        p = self.params
        if len(message) != p.blocks * p.bch_data_bytes:
            raise ValueError("message has the wrong length")
        out = []
        for b in range(p.blocks):
            data = message[b * p.bch_data_bytes : (b + 1) * p.bch_data_bytes]
            ecc = self._bch.encode(data)
            bits = np.unpackbits(np.frombuffer(data + bytes(ecc), dtype=np.uint8))[: p.codeword_bits]
            out.append(bits)
        return np.repeat(np.concatenate(out), p.repetition)

    def decode_inner(self, noisy: Bits) -> Bits:
        """Majority-vote repetition groups: ``(..., response_bits)`` to ``(..., blocks, codeword_bits)``."""
        p = self.params
        groups = noisy.reshape(*noisy.shape[:-1], p.blocks, p.codeword_bits, p.repetition)
        out: Bits = (groups.sum(axis=-1, dtype=np.uint8) > p.repetition // 2).astype(np.uint8)
        return out

    def decode_outer(self, codewords: Bits) -> bytes | None:
        """BCH-decode one device's ``(blocks, codeword_bits)`` bits; ``None`` if a block fails."""
        p = self.params
        pad = 8 * (p.bch_data_bytes + self._bch.ecc_bytes) - p.codeword_bits
        message = bytearray()
        for block in codewords:
            raw = np.packbits(np.concatenate([block, np.zeros(pad, dtype=np.uint8)])).tobytes()
            data = bytearray(raw[: p.bch_data_bytes])
            ecc = bytearray(raw[p.bch_data_bytes :])
            if self._bch.decode(data, ecc) < 0:
                return None
            self._bch.correct(data, ecc)
            message += data
        return bytes(message)

    # -- fuzzy extractor -----------------------------------------------------

    def _response(self, response: Bits) -> Bits:
        need = self.params.response_bits
        if response.ndim != 1 or response.shape[0] < need:
            raise KeyStoreError(f"PUF response too short: need {need} bits")
        return np.asarray(response[:need], dtype=np.uint8)

    def _key(self, w: Bits, offset: bytes, context: bytes) -> tuple[bytes, bytes]:
        salt = hashlib.sha256(offset).digest()
        key = HKDF(hashes.SHA256(), 32, salt=salt, info=_KEY_INFO + context).derive(np.packbits(w).tobytes())
        check = hmac.new(key, _CHECK_INFO, hashlib.sha256).digest()[:_CHECK_BYTES]
        return key, check

    def generate(
        self, response: Bits, *, context: bytes = b"", message: bytes | None = None
    ) -> tuple[bytes, HelperData]:
        """Enroll: derive a 32-byte key from ``response`` and the public helper data.

        Args:
            response: Reference PUF response (0/1 values).
            context: Domain separation mixed into the key.
            message: The random code message ``s``; fresh random bytes if
                ``None`` (pass one only in tests).

        Raises:
            KeyStoreError: the response is too short.
        """
        w = self._response(response)
        p = self.params
        s = message if message is not None else secrets.token_bytes(p.blocks * p.bch_data_bytes)
        offset = np.packbits(w ^ self.encode(s)).tobytes()
        key, check = self._key(w, offset, context)
        return key, HelperData(p, offset, check)

    def reproduce(self, response: Bits, helper: HelperData, *, context: bytes = b"") -> bytes:
        """Reconstruct the enrolled key from a fresh noisy ``response``.

        Raises:
            KeyStoreError: the helper data was made with other parameters, or
                the response is too far from the enrolled one (wrong device,
                or too noisy) — the key-check value did not match.
        """
        if helper.params != self.params:
            raise KeyStoreError("helper data was made with other code parameters")
        w_noisy = self._response(response)
        offset = np.unpackbits(np.frombuffer(helper.offset, dtype=np.uint8))[: self.params.response_bits]
        s = self.decode_outer(self.decode_inner(w_noisy ^ offset))
        if s is None:
            raise KeyStoreError("PUF key reconstruction failed (too many bit errors)")
        w = offset ^ self.encode(s)
        key, check = self._key(w, helper.offset, context)
        if not hmac.compare_digest(check, helper.check):
            raise KeyStoreError("PUF key reconstruction failed (key check mismatch)")
        return key
