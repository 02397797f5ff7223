"""Additively homomorphic sums: packed Paillier with the decryption key split between two parties.

For devices that cannot stay for a multi-round protocol: a device encrypts
its vector once (:meth:`PaillierPublicKey.encrypt_vector`), the hub
multiplies ciphertexts (:func:`add_ciphertexts`, which adds the plaintexts)
without being able to decrypt, and the sum is opened only when **both** the
hub and an independent decryptor apply their key shares
(:meth:`KeyShare.partial_decrypt`, :func:`combine_partials`).

* **Paillier** (1999) with ``g = n + 1``: ``E(m) = (1 + m n) r^n mod n^2``.
  The primes come from OpenSSL's RSA key generation (``cryptography``).
* **Two-party decryption** (the Damgard-Jurik / Shoup idea for two parties):
  ``d = 0 mod lambda`` and ``d = 1 mod n``, so ``c^d = 1 + m n mod n^2``.
  The dealer splits ``d = d_hub + d_decryptor`` over the integers with
  ``d_hub`` uniform over ``[0, 2^(|n^2| + 128))`` (statistically hiding ``d``)
  and forgets ``p``, ``q`` and ``d``; each party computes ``c^{d_i}`` and
  their product is ``c^d``. Either share alone decrypts nothing. Parties are
  honest-but-curious (no proofs of correct partial decryption).
* **Packing**: a plaintext holds ``slots`` values of ``slot_bits`` bits
  (``value_bits`` plus headroom for ``max_summands`` additions), so one
  ciphertext multiplication adds ``slots`` values at once.
* **Arithmetic** on GMP through ``gmpy2`` (LGPL-3.0-or-later, used as a
  dynamically linked library; ADR 0412): the hub's ciphertext products and
  every modular exponentiation. Ciphertexts cross this module's API as Python
  ``int``.
* **Fast encryption**: ``g = n + 1`` makes ``g^m = 1 + m n`` (one
  multiplication); the one exponentiation, ``r^n mod n^2``, does not depend
  on the value, so a device may precompute it off the hot path
  (:class:`RandomnessPool`: each ``r^n`` from a fresh CSPRNG ``r``, used once,
  never stored outside the device's memory). Decryption cannot use CRT: no
  party holds ``p`` and ``q``.

No I/O.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
from cryptography.hazmat.primitives.asymmetric import rsa

from iotguard.errors import ConfigError, MalformedError

__all__ = ["KeyShare", "PaillierPublicKey", "RandomnessPool", "add_ciphertexts", "combine_partials",
           "generate_split_key"]

#: Modulus sizes accepted (bits).
KEY_BITS = (2048, 3072)
_HIDING_BITS = 128


@dataclass(frozen=True)
class PaillierPublicKey:
    """The public key and the packing layout every device uses.

    Attributes:
        n: The modulus.
        value_bits: Bits of each packed value (values lie in ``[0, 2^value_bits)``).
        max_summands: Most ciphertexts that may be added before decryption (headroom per slot).
    """

    n: int
    value_bits: int = 32
    max_summands: int = 1 << 16

    @property
    def n2(self) -> int:
        return self.n * self.n

    @property
    def slot_bits(self) -> int:
        return self.value_bits + max(1, math.ceil(math.log2(self.max_summands)))

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return (self.n.bit_length() - 1) // self.slot_bits

    def validate(self) -> None:
        """Raises :class:`ConfigError` for a key or layout outside the supported range."""
        if (self.n.bit_length() not in KEY_BITS or not 1 <= self.value_bits <= 64
                or not 2 <= self.max_summands <= 1 << 32):
            raise ConfigError("Paillier key must be 2048 or 3072 bits, value_bits 1..64, max_summands 2..2^32")

    def randomizer(self) -> int:
        """A fresh ``r^n mod n^2`` (``r`` a uniform unit of ``Z_n`` from the CSPRNG): one encryption's randomness."""
        while True:
            r = secrets.randbelow(self.n)
            if r > 1 and math.gcd(r, self.n) == 1:
                return int(gmpy2.powmod(r, self.n, self.n2))

    def encrypt(self, m: int, randomizer: int | None = None) -> int:
        """``E(m) = (1 + m n) r^n mod n^2`` for ``0 <= m < n``; ``randomizer``: a fresh ``r^n`` used for nothing else.

        Raises:
            ConfigError: ``m`` out of range.
        """
        if not 0 <= m < self.n:
            raise ConfigError("plaintext out of range")
        rn = self.randomizer() if randomizer is None else randomizer
        n2 = gmpy2.mpz(self.n2)
        return int((1 + m * self.n) * gmpy2.mpz(rn) % n2)

    def pack(self, values: Sequence[int]) -> list[int]:
        """Plaintexts holding ``values`` (each in ``[0, 2^value_bits)``), ``slots`` per plaintext."""
        top = 1 << self.value_bits
        out = []
        for i in range(0, len(values), self.slots):
            m = 0
            for j, v in enumerate(values[i:i + self.slots]):
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < top:
                    raise ConfigError(f"packed values must be integers in [0, 2^{self.value_bits})")
                m |= v << (j * self.slot_bits)
            out.append(m)
        return out

    def unpack(self, plaintexts: Sequence[int], length: int) -> list[int]:
        """The ``length`` slot values of summed plaintexts."""
        mask = (1 << self.slot_bits) - 1
        out = [(m >> (j * self.slot_bits)) & mask for m in plaintexts for j in range(self.slots)]
        return out[:length]

    def encrypt_vector(self, values: Sequence[int], pool: RandomnessPool | None = None) -> list[int]:
        """A device's packed, encrypted vector (randomness from ``pool`` when given, else computed now)."""
        if pool is not None and pool.n != self.n:
            raise ConfigError("randomness pool is for another key")
        return [self.encrypt(m, pool.take() if pool is not None else None) for m in self.pack(values)]

    def check_ciphertext(self, c: int) -> None:
        """Raises :class:`MalformedError` unless ``0 < c < n^2`` (unit-ness is checked on the sum, once)."""
        if isinstance(c, bool) or not isinstance(c, int) or not 0 < c < self.n2:
            raise MalformedError("ciphertext is not an element of Z_{n^2}")


class RandomnessPool:
    """Encryption randomness ``r^n mod n^2`` computed ahead of time (the device's idle time), each used once.

    Security: a pooled ``r^n`` is exactly the value :meth:`PaillierPublicKey.encrypt`
    would compute at once from a fresh CSPRNG ``r``, and :meth:`take` removes it,
    so ciphertexts are distributed as in textbook Paillier. The pool is as
    secret as the values it will encrypt (``c / r^n = 1 + m n``): it lives only
    in the device's memory and is never serialised.
    """

    def __init__(self, pk: PaillierPublicKey) -> None:
        self.n = pk.n
        self._pk = pk
        self._values: list[int] = []

    def __len__(self) -> int:
        return len(self._values)

    def refill(self, count: int) -> None:
        """Precompute ``count`` more randomizers (the expensive part of encryption)."""
        self._values.extend(self._pk.randomizer() for _ in range(count))

    def take(self) -> int:
        """One randomizer, removed from the pool (computed now when the pool is empty)."""
        return self._values.pop() if self._values else self._pk.randomizer()


def add_ciphertexts(pk: PaillierPublicKey, vectors: Sequence[Sequence[int]]) -> list[int]:
    """The encrypted sum of encrypted vectors (the hub's work; it never decrypts).

    Each ciphertext must lie in ``(0, n^2)``; the sum must be a unit of
    ``Z_{n^2}``, which holds exactly when every summand is one (one gcd per
    sum instead of one per ciphertext).

    Raises:
        MalformedError: vectors of different lengths, a malformed ciphertext, or more than
            ``max_summands`` vectors (the slots would overflow).
    """
    if not vectors or len(vectors) > pk.max_summands or len({len(v) for v in vectors}) != 1:
        raise MalformedError("encrypted vectors must be 1..max_summands of one length")
    n2, mpz = pk.n2, gmpy2.mpz
    m2 = mpz(n2)
    for c in vectors[0]:
        pk.check_ciphertext(c)
    total = [mpz(c) for c in vectors[0]]
    for vec in vectors[1:]:
        # exactly int (bool and int subclasses are refused), each in (0, n^2): checked in C for the whole vector
        if set(map(type, vec)) != {int} or min(vec) <= 0 or max(vec) >= n2:
            raise MalformedError("ciphertext is not an element of Z_{n^2}")
        total = [t * mpz(c) % m2 for t, c in zip(total, vec, strict=True)]
    n = gmpy2.mpz(pk.n)
    for c in total:
        if gmpy2.gcd(c, n) != 1:
            raise MalformedError("a summand is not a unit of Z*_{n^2}")
    return [int(c) for c in total]


@dataclass(frozen=True)
class KeyShare:
    """One party's share of the decryption exponent (the hub's or the decryptor's)."""

    party: str
    n: int
    d: int

    def partial_decrypt(self, ciphertexts: Sequence[int]) -> list[int]:
        """``c^{d_i} mod n^2`` for each ciphertext (reveals nothing without the other share)."""
        n2 = gmpy2.mpz(self.n) ** 2
        return [int(gmpy2.powmod(c, self.d, n2)) for c in ciphertexts]


def combine_partials(pk: PaillierPublicKey, hub: Sequence[int], decryptor: Sequence[int]) -> list[int]:
    """The plaintexts from both parties' partial decryptions.

    Raises:
        MalformedError: the partials do not combine to a valid plaintext (a wrong or tampered share).
    """
    n, n2 = pk.n, gmpy2.mpz(pk.n2)
    out = []
    for a, b in zip(hub, decryptor, strict=True):
        u = int(gmpy2.mpz(a) * b % n2)
        if (u - 1) % n:
            raise MalformedError("partial decryptions do not combine (wrong key share or tampered partial)")
        out.append((u - 1) // n)
    return out


def generate_split_key(bits: int = 2048, *, value_bits: int = 32,
                       max_summands: int = 1 << 16) -> tuple[PaillierPublicKey, KeyShare, KeyShare]:
    """The dealer: a Paillier key, split between the hub and the decryptor; ``p``, ``q`` and ``d`` are dropped.

    Run where neither party can keep the whole key (the decryptor's machine, then
    hand the hub its share), or by a trusted dealer.
    """
    if bits not in KEY_BITS:
        raise ConfigError("Paillier key must be 2048 or 3072 bits")
    while True:
        nums = rsa.generate_private_key(65537, bits).private_numbers()
        p, q = nums.p, nums.q
        n = p * q
        if n.bit_length() == bits and math.gcd(n, (p - 1) * (q - 1)) == 1:
            break
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    d = lam * pow(lam, -1, n)  # d = 0 mod lambda, d = 1 mod n
    d_hub = secrets.randbits((n * n).bit_length() + _HIDING_BITS)
    pk = PaillierPublicKey(n, value_bits, max_summands)
    pk.validate()
    return pk, KeyShare("hub", n, d_hub), KeyShare("decryptor", n, d - d_hub)
