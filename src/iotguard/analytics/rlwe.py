"""Additively homomorphic sums on Ring-LWE, the decryption key split between two parties.

For devices that cannot stay for a multi-round protocol: a device encrypts
its vector once (:meth:`RlwePublicKey.encrypt_vector`); the hub adds
ciphertexts word by word (:func:`add_ciphertexts`) without being able to
decrypt; the sum opens only when **both** the hub and an independent
decryptor apply their key shares (:meth:`RlweKeyShare.partial_decrypt`,
:func:`combine_partials`). ADR 0418 has the parameters and the argument.

* **Scheme**: BFV-style public-key encryption in ``R_q = Z_q[X]/(X^N + 1)``,
  ``N = 8192``, ``q`` the product of five 31-bit NTT primes (155 bits; the
  homomorphic-encryption security standard allows 218 at 128-bit security
  for this ``N``). A value is one coefficient of the plaintext, scaled by
  ``Delta = floor(q / t)``; ``t = 2^(value_bits + ceil(log2 max_summands))``
  so a sum of ``max_summands`` vectors never wraps.
* **Two parties, no dealer needed**: both share the public polynomial ``a``
  (expanded from a seed with SHAKE-256); party ``i`` draws a ternary secret
  ``s_i`` and error ``e_i`` and publishes ``b_i = -a s_i + e_i``; the public
  key is ``b = b_1 + b_2``, the secret ``s_1 + s_2`` exists nowhere. Party
  ``i`` decrypts partially as ``c_1 s_i + E_i`` with ``E_i`` uniform over
  ``2^smudging_bits`` (noise flooding: statistically within ``2^-40`` of a
  partial that reveals nothing of ``s_i`` beyond the sum).
* **Noise**: errors from a centred binomial distribution (``eta = 21``,
  standard deviation 3.24), so every bound is a worst case, not a tail
  probability; the parameters are refused when ``q`` cannot hold ``t`` times
  the flooded noise of ``max_summands`` ciphertexts.
* **Arithmetic**: NumPy ``uint64`` in the residue number system (one row per
  prime), a negacyclic number-theoretic transform for products; the hub's
  sum is word additions with one reduction at the end.

Parties are honest-but-curious (no proofs of correct partial decryption or
key generation). No I/O.
"""

from __future__ import annotations

import functools
import hashlib
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError, MalformedError

__all__ = ["CIPHERTEXT_BYTES", "PUBLIC_PART_BYTES", "RING_DEGREE", "RlweKeyShare", "RlweParams", "RlwePublicKey",
           "add_ciphertexts", "combine_partials", "generate_split_key", "keygen_share", "public_key_from_parts"]

Poly = npt.NDArray[np.uint64]

#: Ring degree ``N`` (values per ciphertext).
RING_DEGREE = 8192
#: The RNS primes: the largest five below 2^31 that are 1 mod 2N.
PRIMES = (2147352577, 2147205121, 2147074049, 2146959361, 2146713601)
#: Centred binomial parameter of every error term.
ETA = 21
#: Statistical distance of a flooded partial decryption: at most 2^-(STAT_BITS + 1).
STAT_BITS = 40
SEED_BYTES = 32
_L = len(PRIMES)
#: One ciphertext: two polynomials, five residues of N little-endian 32-bit words each.
CIPHERTEXT_BYTES = 2 * _L * RING_DEGREE * 4
#: A public key part ``b_i`` (or the joint ``b``): one polynomial in the NTT domain.
PUBLIC_PART_BYTES = _L * RING_DEGREE * 4
_Q = math.prod(PRIMES)


class _Ring:
    """Residue-number-system arithmetic in ``Z_q[X]/(X^N + 1)`` with negacyclic NTTs."""

    def __init__(self, n: int, primes: Sequence[int]) -> None:
        self.n = n
        self.p = np.array(primes, dtype=np.uint64)[:, None]
        self.p_signed = self.p.astype(np.int64)
        self.p32 = self.p.astype(np.uint32)
        psi = [_root_of_minus_one(p, n) for p in primes]
        self.twist = self._table([[pow(r, i, p) for i in range(n)] for r, p in zip(psi, primes, strict=True)])
        self.untwist = self._table([[pow(r, -i, p) * pow(n, -1, p) % p for i in range(n)]
                                    for r, p in zip(psi, primes, strict=True)])
        self.fwd: list[Poly] = []
        self.inv: list[Poly] = []
        m = n
        while m > 1:  # stage with blocks of m: twiddles w_m^j, j < m/2, w_m = psi^(2N/m)
            half = m // 2
            self.fwd.append(self._table([[pow(r, 2 * n // m * j, p) for j in range(half)]
                                         for r, p in zip(psi, primes, strict=True)])[:, None, :])
            self.inv.append(self._table([[pow(r, -2 * n // m * j, p) for j in range(half)]
                                         for r, p in zip(psi, primes, strict=True)])[:, None, :])
            m = half
        self.inv.reverse()

    @staticmethod
    def _table(rows: list[list[int]]) -> Poly:
        return np.array(rows, dtype=np.uint64)

    def ntt(self, a: Poly) -> Poly:
        """Forward negacyclic transform (natural order in, bit-reversed out)."""
        p3 = self.p[:, :, None]
        x = a * self.twist % self.p
        m = self.n
        for w in self.fwd:
            half = m // 2
            blocks = x.reshape(_L, self.n // m, 2, half)
            u, v = blocks[:, :, 0, :], blocks[:, :, 1, :]
            top = (u + v) % p3
            bottom = (u + p3 - v) * w % p3
            x = np.stack((top, bottom), axis=2).reshape(_L, self.n)
            m = half
        return x

    def intt(self, a: Poly) -> Poly:
        """Inverse of :meth:`ntt` (bit-reversed in, natural order out)."""
        p3 = self.p[:, :, None]
        x = a
        m = 2
        for w in self.inv:
            half = m // 2
            blocks = x.reshape(_L, self.n // m, 2, half)
            u, v = blocks[:, :, 0, :], blocks[:, :, 1, :] * w % p3
            x = np.stack(((u + v) % p3, (u + p3 - v) % p3), axis=2).reshape(_L, self.n)
            m *= 2
        return x * self.untwist % self.p

    def small(self, coefficients: npt.NDArray[np.int64]) -> Poly:
        """A polynomial with small signed coefficients, in residues."""
        return np.mod(coefficients[None, :], self.p_signed).astype(np.uint64)

    def mul(self, a: Poly, b: Poly) -> Poly:
        return a * b % self.p


def _root_of_minus_one(p: int, n: int) -> int:
    """The smallest ``x^((p-1)/2N)`` of order exactly ``2N`` mod ``p`` (``psi^N = -1``)."""
    for x in range(2, 1000):
        r = pow(x, (p - 1) // (2 * n), p)
        if pow(r, n, p) == p - 1:
            return r
    raise ConfigError(f"no 2N-th root of unity mod {p}")  # pragma: no cover - PRIMES are checked by tests


@functools.cache
def _ring() -> _Ring:
    return _Ring(RING_DEGREE, PRIMES)


def _ternary(n: int) -> npt.NDArray[np.int64]:
    out = np.empty(0, dtype=np.int64)
    while out.size < n:  # bytes 0..254 are uniform mod 3
        raw = np.frombuffer(secrets.token_bytes(2 * n), dtype=np.uint8)
        out = np.concatenate((out, raw[raw < 255].astype(np.int64) % 3 - 1))
    return out[:n]


def _cbd(n: int) -> npt.NDArray[np.int64]:
    bits = np.unpackbits(np.frombuffer(secrets.token_bytes(6 * n), dtype=np.uint8)).reshape(n, 48)
    out: npt.NDArray[np.int64] = bits[:, :ETA].sum(axis=1, dtype=np.int64) - bits[:, ETA:2 * ETA].sum(
        axis=1, dtype=np.int64)
    return out


def _uniform_from_seed(seed: bytes) -> Poly:
    """The public polynomial ``a`` (NTT domain): rejection-sampled 31-bit words from SHAKE-256."""
    rows = []
    for i, p in enumerate(PRIMES):
        words = np.empty(0, dtype=np.uint64)
        block = 0
        while words.size < RING_DEGREE:
            raw = hashlib.shake_256(b"iotguard-rlwe-a|" + seed + bytes([i, block])).digest(4 * RING_DEGREE * 9 // 8)
            w = np.frombuffer(raw, dtype="<u4").astype(np.uint64) & np.uint64(0x7FFFFFFF)
            words = np.concatenate((words, w[w < p]))
            block += 1
        rows.append(words[:RING_DEGREE])
    return np.stack(rows)


def _flood(bits: int, n: int, seed: bytes | None = None) -> Poly:
    """Uniform integers in ``[-2^bits, 2^bits)``, in residues (from SHAKE-256 of ``seed`` when given)."""
    ring = _ring()
    words = (bits + 1 + 31) // 32
    raw_bytes = secrets.token_bytes(4 * words * n) if seed is None else hashlib.shake_256(
        b"iotguard-rlwe-flood|" + seed).digest(4 * words * n)
    raw = np.frombuffer(raw_bytes, dtype="<u4").astype(np.uint64).reshape(words, n)
    top_bits = bits + 1 - 32 * (words - 1)
    raw[-1] &= np.uint64((1 << top_bits) - 1)
    acc = np.zeros((_L, n), dtype=np.uint64)
    for k in range(words):
        scale = np.array([pow(2, 32 * k, p) for p in PRIMES], dtype=np.uint64)[:, None]
        acc = (acc + raw[k][None, :] % ring.p * scale) % ring.p
    offset = np.array([(1 << bits) % p for p in PRIMES], dtype=np.uint64)[:, None]
    return (acc + ring.p - offset) % ring.p


@dataclass(frozen=True)
class RlweParams:
    """The plaintext layout a round uses.

    Attributes:
        value_bits: Each value is an integer in ``[0, 2^value_bits)`` (1..32).
        max_summands: Most ciphertexts that may be added before decryption (2..65,536).
    """

    value_bits: int = 32
    max_summands: int = 1024

    def validate(self) -> None:
        """Raises :class:`ConfigError` when the layout is out of range or ``q`` cannot hold its noise."""
        if not 1 <= self.value_bits <= 32 or not 2 <= self.max_summands <= 1 << 16:
            raise ConfigError("value_bits must be 1..32 and max_summands 2..65536")
        if 2 * self.t * (self.noise_bound + (2 << self.smudging_bits) + self.t) >= _Q:  # pragma: no cover
            raise ConfigError("the modulus cannot hold this layout's noise")

    @property
    def t(self) -> int:
        """The plaintext modulus: values plus headroom for ``max_summands`` additions."""
        return 1 << (self.value_bits + math.ceil(math.log2(self.max_summands)))

    @property
    def delta(self) -> int:
        return _Q // self.t

    @property
    def noise_bound(self) -> int:
        """Worst-case noise of a sum of ``max_summands`` fresh ciphertexts under ``s_1 + s_2``."""
        return self.max_summands * (4 * RING_DEGREE * ETA + ETA)

    @property
    def smudging_bits(self) -> int:
        """Flooding width of a partial decryption: ``N * noise_bound * 2^STAT_BITS`` rounded up to a power of 2."""
        return math.ceil(math.log2(RING_DEGREE * self.noise_bound)) + STAT_BITS

    @property
    def slots(self) -> int:
        return RING_DEGREE

    def ciphertexts(self, dims: int) -> int:
        return math.ceil(dims / RING_DEGREE)


def _poly_bytes(p: Poly) -> bytes:
    return p.astype("<u4").tobytes()


def _parse_poly(raw: bytes, what: str) -> Poly:
    if len(raw) != PUBLIC_PART_BYTES:
        raise MalformedError(f"{what}: expected {PUBLIC_PART_BYTES} bytes")
    p = np.frombuffer(raw, dtype="<u4").astype(np.uint64).reshape(_L, RING_DEGREE)
    if bool((p >= _ring().p).any()):
        raise MalformedError(f"{what}: a word is not reduced modulo its prime")
    return p


@dataclass(frozen=True, eq=False)
class RlwePublicKey:
    """The joint public key ``(a, b)``: ``a`` from ``seed``, ``b`` in the NTT domain."""

    params: RlweParams
    seed: bytes
    b_hat: Poly

    def validate(self) -> None:
        """Raises :class:`ConfigError` with the reason."""
        self.params.validate()
        if len(self.seed) != SEED_BYTES or self.b_hat.shape != (_L, RING_DEGREE) or bool(
                (self.b_hat >= _ring().p).any()):
            raise ConfigError("malformed RLWE public key")

    def b_bytes(self) -> bytes:
        return _poly_bytes(self.b_hat)

    @classmethod
    def from_bytes(cls, params: RlweParams, seed: bytes, b: bytes) -> RlwePublicKey:
        """Raises :class:`MalformedError` for a wrong size or an unreduced word."""
        if len(seed) != SEED_BYTES:
            raise MalformedError("public key seed: expected 32 bytes")
        return cls(params, bytes(seed), _parse_poly(b, "public key"))

    def encrypt(self, values: Sequence[int]) -> bytes:
        """One ciphertext of up to ``N`` values in ``[0, 2^value_bits)`` (the rest are zero).

        Raises:
            ConfigError: too many values or a value out of range.
        """
        if len(values) > RING_DEGREE:
            raise ConfigError(f"a ciphertext holds at most {RING_DEGREE} values")
        m = np.zeros(RING_DEGREE, dtype=np.uint64)
        if len(values):
            v = np.array(values, dtype=object)
            if bool(((v < 0) | (v >= 1 << self.params.value_bits)).any()):
                raise ConfigError(f"values must be in [0, 2^{self.params.value_bits})")
            m[: len(values)] = np.array(values, dtype=np.uint64)
        ring = _ring()
        u_hat = ring.ntt(ring.small(_ternary(RING_DEGREE)))
        delta = np.array([self.params.delta % p for p in PRIMES], dtype=np.uint64)[:, None]
        c0 = ring.intt(ring.mul(self.b_hat, u_hat))
        c0 = (c0 + ring.small(_cbd(RING_DEGREE)) + m[None, :] % ring.p * delta % ring.p) % ring.p
        c1 = (ring.intt(ring.mul(_a_hat(self.seed), u_hat)) + ring.small(_cbd(RING_DEGREE))) % ring.p
        return _poly_bytes(c0) + _poly_bytes(c1)

    def encrypt_vector(self, values: Sequence[int]) -> list[bytes]:
        """``ceil(len / N)`` ciphertexts of the values, in order."""
        return [self.encrypt(values[i:i + RING_DEGREE]) for i in range(0, max(len(values), 1), RING_DEGREE)]


@functools.lru_cache(maxsize=8)
def _a_hat(seed: bytes) -> Poly:
    return _uniform_from_seed(seed)


def parse_ciphertext(raw: bytes) -> npt.NDArray[np.uint32]:
    """A ciphertext as a ``(2, 5, N)`` array of residues (a read-only view of ``raw``).

    Raises:
        MalformedError: wrong size or a word not reduced modulo its prime.
    """
    if len(raw) != CIPHERTEXT_BYTES:
        raise MalformedError(f"ciphertext: expected {CIPHERTEXT_BYTES} bytes")
    words = np.frombuffer(raw, dtype="<u4").reshape(2, _L, RING_DEGREE)
    if bool((words >= _ring().p32).any()):
        raise MalformedError("ciphertext: a word is not reduced modulo its prime")
    return words


def add_ciphertexts(params: RlweParams, vectors: Sequence[Sequence[bytes | Poly]]) -> list[Poly]:
    """The encrypted element-wise sum of the devices' vectors (no key needed).

    Raises:
        MalformedError: no vectors, vectors of different lengths, more than ``max_summands``
            vectors, or a malformed ciphertext.
    """
    if not vectors or len({len(v) for v in vectors}) != 1:
        raise MalformedError("the vectors must be non-empty and of one length")
    if len(vectors) > params.max_summands:
        raise MalformedError(f"more than max_summands={params.max_summands} vectors")
    acc = np.zeros((len(vectors[0]), 2, _L, RING_DEGREE), dtype=np.uint64)
    for vec in vectors:  # 2^16 summands of words < 2^31 stay below 2^47: reduce once at the end
        for k, c in enumerate(vec):
            np.add(acc[k], parse_ciphertext(c) if isinstance(c, bytes) else c, out=acc[k])
    p = _ring().p
    return [a % p for a in acc]


@dataclass(frozen=True, eq=False)
class RlweKeyShare:
    """One party's secret share ``s_i`` (ternary) for the public polynomial of ``seed``."""

    party: str
    seed: bytes
    s: npt.NDArray[np.int64]

    def partial_decrypt(self, params: RlweParams, encrypted: Sequence[Poly], *,
                        flood_seed: bytes | None = None) -> list[Poly]:
        """``c_1 s_i + E_i`` for each summed ciphertext, ``E_i`` flooding noise (reveals nothing of ``s_i``).

        ``flood_seed`` (secret, at least 32 bytes, one per encrypted sum) makes the flooding repeatable, so
        every process that decrypts the same sum partially gives the same answer; by default it is fresh.
        """
        if flood_seed is not None and len(flood_seed) < SEED_BYTES:
            raise ConfigError("a flooding seed is at least 32 bytes")
        ring = _ring()
        s_hat = ring.ntt(ring.small(self.s))
        return [(ring.intt(ring.mul(ring.ntt(c[1]), s_hat))
                 + _flood(params.smudging_bits, RING_DEGREE, None if flood_seed is None else flood_seed + bytes([k])))
                % ring.p for k, c in enumerate(encrypted)]

    def to_bytes(self) -> bytes:
        """Seed and one byte per coefficient (``s + 1``): keep it sealed."""
        return self.seed + (self.s + 1).astype(np.uint8).tobytes()

    @classmethod
    def from_bytes(cls, party: str, raw: bytes) -> RlweKeyShare:
        """Raises :class:`MalformedError` for a wrong size or a coefficient outside {-1, 0, 1}."""
        if len(raw) != SEED_BYTES + RING_DEGREE:
            raise MalformedError("key share: wrong size")
        s = np.frombuffer(raw[SEED_BYTES:], dtype=np.uint8).astype(np.int64) - 1
        if bool((s > 1).any()):
            raise MalformedError("key share: a coefficient is not ternary")
        return cls(party, bytes(raw[:SEED_BYTES]), s)


def keygen_share(party: str, seed: bytes) -> tuple[RlweKeyShare, Poly]:
    """One party's key generation: its secret share and its public part ``b_i = -a s_i + e_i`` (NTT domain)."""
    if len(seed) != SEED_BYTES:
        raise ConfigError("the public polynomial's seed is 32 bytes")
    ring = _ring()
    s = _ternary(RING_DEGREE)
    b = (ring.p - ring.mul(_a_hat(seed), ring.ntt(ring.small(s)))) % ring.p
    return RlweKeyShare(party, seed, s), (b + ring.ntt(ring.small(_cbd(RING_DEGREE)))) % ring.p


def public_key_from_parts(params: RlweParams, seed: bytes, parts: Sequence[Poly]) -> RlwePublicKey:
    """The joint public key from both parties' public parts."""
    ring = _ring()
    b = np.zeros((_L, RING_DEGREE), dtype=np.uint64)
    for part in parts:
        b = (b + part) % ring.p
    pk = RlwePublicKey(params, seed, b)
    pk.validate()
    return pk


def generate_split_key(value_bits: int = 32, max_summands: int = 1024) -> tuple[RlwePublicKey, RlweKeyShare,
                                                                                 RlweKeyShare]:
    """Both parties' key generation in one place (tests, simulations, or a dealer trusted to forget a share)."""
    params = RlweParams(value_bits, max_summands)
    params.validate()
    seed = secrets.token_bytes(SEED_BYTES)
    hub, b_hub = keygen_share("hub", seed)
    dec, b_dec = keygen_share("decryptor", seed)
    return public_key_from_parts(params, seed, [b_hub, b_dec]), hub, dec


def combine_partials(params: RlweParams, encrypted: Sequence[Poly], partials: Sequence[Sequence[Poly]],
                     length: int) -> list[int]:
    """The first ``length`` summed values from both parties' partial decryptions.

    Raises:
        MalformedError: the partials do not combine to a plaintext within the noise bound (a wrong or
            tampered share or partial).
    """
    ring = _ring()
    t, q = params.t, _Q
    crt = [(q // p) * pow(q // p, -1, p) for p in PRIMES]
    limit = t * (t + params.noise_bound + (2 << params.smudging_bits))
    out: list[int] = []
    for k, c in enumerate(encrypted):
        x = c[0].copy()
        for part in partials:
            x = (x + part[k]) % ring.p
        big = sum(x[i].astype(object) * crt[i] for i in range(_L)) % q
        rounded = (big * t + q // 2) // q
        if bool((abs(big * t - rounded * q) > limit).any()):
            raise MalformedError("partial decryptions do not combine (wrong key share or tampered partial)")
        out.extend(int(v) for v in rounded % t)
    return out[:length]
