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

No I/O. Integers are Python's (``gmpy2`` is not used: it is LGPL).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from iotguard.errors import ConfigError, MalformedError

__all__ = ["KeyShare", "PaillierPublicKey", "add_ciphertexts", "combine_partials", "generate_split_key"]

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

    def encrypt(self, m: int) -> int:
        """``E(m)`` for ``0 <= m < n``."""
        if not 0 <= m < self.n:
            raise ConfigError("plaintext out of range")
        while True:
            r = secrets.randbelow(self.n)
            if r > 1 and math.gcd(r, self.n) == 1:
                break
        return (1 + m * self.n) * pow(r, self.n, self.n2) % self.n2

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

    def encrypt_vector(self, values: Sequence[int]) -> list[int]:
        """A device's packed, encrypted vector."""
        return [self.encrypt(m) for m in self.pack(values)]

    def check_ciphertext(self, c: int) -> None:
        """Raises :class:`MalformedError` unless ``0 < c < n^2`` (unit-ness is checked on the sum, once)."""
        if isinstance(c, bool) or not isinstance(c, int) or not 0 < c < self.n2:
            raise MalformedError("ciphertext is not an element of Z_{n^2}")


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
    n2 = pk.n2
    total = list(vectors[0])
    for c in total:
        pk.check_ciphertext(c)
    for vec in vectors[1:]:
        for i, c in enumerate(vec):
            pk.check_ciphertext(c)
            total[i] = total[i] * c % n2
    for c in total:
        if math.gcd(c, pk.n) != 1:
            raise MalformedError("a summand is not a unit of Z*_{n^2}")
    return total


@dataclass(frozen=True)
class KeyShare:
    """One party's share of the decryption exponent (the hub's or the decryptor's)."""

    party: str
    n: int
    d: int

    def partial_decrypt(self, ciphertexts: Sequence[int]) -> list[int]:
        """``c^{d_i} mod n^2`` for each ciphertext (reveals nothing without the other share)."""
        n2 = self.n * self.n
        return [pow(c, self.d, n2) for c in ciphertexts]


def combine_partials(pk: PaillierPublicKey, hub: Sequence[int], decryptor: Sequence[int]) -> list[int]:
    """The plaintexts from both parties' partial decryptions.

    Raises:
        MalformedError: the partials do not combine to a valid plaintext (a wrong or tampered share).
    """
    n, n2 = pk.n, pk.n2
    out = []
    for a, b in zip(hub, decryptor, strict=True):
        u = a * b % n2
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
