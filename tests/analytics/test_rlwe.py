"""Ring-LWE homomorphic sums with a two-party key: ring arithmetic, exact sums, and what one party cannot do."""

from __future__ import annotations

import numpy as np
import pytest

from iotguard.analytics import rlwe
from iotguard.analytics.rlwe import (
    CIPHERTEXT_BYTES,
    PRIMES,
    RING_DEGREE,
    RlweKeyShare,
    RlweParams,
    add_ciphertexts,
    combine_partials,
    generate_split_key,
    keygen_share,
    public_key_from_parts,
)
from iotguard.errors import ConfigError, MalformedError

N = RING_DEGREE


@pytest.fixture(scope="module")
def key() -> tuple[rlwe.RlwePublicKey, RlweKeyShare, RlweKeyShare]:
    return generate_split_key(value_bits=16, max_summands=8)


def _poly(rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.integers(0, p, N, dtype=np.uint64) for p in PRIMES])


def _is_prime(n: int) -> bool:
    """Miller-Rabin with the first twelve prime bases: deterministic below 3.3e24."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2 or any(n % b == 0 for b in bases):
        return n in bases
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_primes_are_ntt_primes_and_the_modulus_is_within_the_security_standard() -> None:
    assert not _is_prime(2147352577 * 3) and _is_prime(2**31 - 1)
    for p in PRIMES:
        assert _is_prime(p) and p % (2 * N) == 1 and p < 2**31
    # HE security standard (Albrecht et al. 2018), ternary secret, 128-bit classical: log q <= 218 at N = 8192
    assert sum(p.bit_length() for p in PRIMES) <= 218


def test_the_transform_multiplies_negacyclically_like_schoolbook() -> None:
    ring = rlwe._ring()
    rng = np.random.default_rng(3)
    a = _poly(rng)
    s = rng.integers(-1, 2, N).astype(np.int64)
    assert (ring.intt(ring.ntt(a)) == a).all()
    got = ring.intt(ring.mul(ring.ntt(a), ring.ntt(ring.small(s))))
    for i, p in enumerate(PRIMES):
        full = np.convolve(a[i].astype(np.int64), s)
        expected = (full[:N] - np.concatenate([full[N:], [0]])) % p  # X^N = -1
        assert (got[i] == expected.astype(np.uint64)).all()


def test_the_sum_of_many_vectors_is_exact_up_to_the_largest_values(key) -> None:
    pk, hub, decryptor = key
    rng = np.random.default_rng(5)
    dims = N + 100  # two ciphertexts, the second one mostly padding
    top = (1 << 16) - 1
    vectors = [[top] * dims] + [[int(v) for v in rng.integers(0, top + 1, dims)] for _ in range(7)]
    encrypted = add_ciphertexts(pk.params, [pk.encrypt_vector(v) for v in vectors])
    opened = combine_partials(pk.params, encrypted, [hub.partial_decrypt(pk.params, encrypted),
                                              decryptor.partial_decrypt(pk.params, encrypted)], dims)
    assert opened == [sum(col) for col in zip(*vectors, strict=True)]


def test_one_party_alone_opens_nothing(key) -> None:
    pk, hub, decryptor = key
    encrypted = add_ciphertexts(pk.params, [pk.encrypt_vector([7, 8, 9]), pk.encrypt_vector([1, 2, 3])])
    for share in (hub, decryptor):
        with pytest.raises(MalformedError, match="do not combine"):
            combine_partials(pk.params, encrypted, [share.partial_decrypt(pk.params, encrypted)], 3)


def test_a_tampered_partial_or_a_share_of_another_key_is_detected(key) -> None:
    pk, hub, decryptor = key
    encrypted = add_ciphertexts(pk.params, [pk.encrypt_vector([5] * 10), pk.encrypt_vector([6] * 10)])
    good = decryptor.partial_decrypt(pk.params, encrypted)
    tampered = [good[0].copy()]
    tampered[0][0, 0] = (tampered[0][0, 0] + 12345) % PRIMES[0]
    with pytest.raises(MalformedError):
        combine_partials(pk.params, encrypted, [hub.partial_decrypt(pk.params, encrypted), tampered], 10)
    _other_pk, other_hub, _ = generate_split_key(value_bits=16, max_summands=8)
    with pytest.raises(MalformedError):
        combine_partials(pk.params, encrypted, [other_hub.partial_decrypt(pk.params, encrypted), good], 10)


def _invert(x: np.ndarray) -> np.ndarray:
    """Element-wise inverse mod each prime (Fermat), for the attack below."""
    ring = rlwe._ring()
    out = np.ones_like(x)
    base, e = x.copy(), [p - 2 for p in PRIMES]
    for bit in range(31):
        sel = np.array([(ei >> bit) & 1 for ei in e], dtype=bool)
        out[sel] = out[sel] * base[sel] % ring.p[sel]
        base = base * base % ring.p
    return out


def test_attack_recover_the_hub_share_from_its_partial_decryption_fails_because_of_flooding(key) -> None:
    # Whoever combines sees the hub's partial c1*s_hub + E and knows c1: without the flooding E it
    # divides and reads s_hub, and with the decryptor's own share would then open every device's
    # ciphertext of that key.
    pk, hub, _ = key
    ring = rlwe._ring()
    encrypted = add_ciphertexts(pk.params, [pk.encrypt_vector([1, 2]), pk.encrypt_vector([3, 4])])
    partial = hub.partial_decrypt(pk.params, encrypted)[0]
    c1_hat = ring.ntt(encrypted[0][1])
    guess = ring.intt(ring.mul(ring.ntt(partial), _invert(c1_hat)))
    centred = np.where(guess > ring.p // 2, guess.astype(np.int64) - ring.p.astype(np.int64), guess.astype(np.int64))
    assert not (centred[0] == hub.s).all()
    # the flooding fills every residue (removing it makes both assertions fail)
    flood = (partial - ring.intt(ring.mul(c1_hat, ring.ntt(ring.small(hub.s))))) % ring.p
    assert (flood != 0).mean() > 0.99


def test_malformed_ciphertexts_and_too_many_summands_are_refused(key) -> None:
    pk, _, _ = key
    good = pk.encrypt_vector([1, 2, 3])
    with pytest.raises(MalformedError, match="expected"):
        add_ciphertexts(pk.params, [good, [good[0][:-4]]])
    unreduced = bytearray(good[0])
    unreduced[0:4] = (PRIMES[0]).to_bytes(4, "little")
    with pytest.raises(MalformedError, match="not reduced"):
        add_ciphertexts(pk.params, [good, [bytes(unreduced)]])
    with pytest.raises(MalformedError, match="max_summands"):
        add_ciphertexts(pk.params, [good] * 9)
    with pytest.raises(MalformedError, match="one length"):
        add_ciphertexts(pk.params, [good, good + good])
    assert len(good[0]) == CIPHERTEXT_BYTES


def test_values_out_of_range_and_bad_layouts_are_refused(key) -> None:
    pk, _, _ = key
    with pytest.raises(ConfigError):
        pk.encrypt([1 << 16])
    with pytest.raises(ConfigError):
        pk.encrypt([-1])
    for bad in (RlweParams(0, 8), RlweParams(33, 8), RlweParams(16, 1), RlweParams(16, (1 << 16) + 1)):
        with pytest.raises(ConfigError):
            bad.validate()
    RlweParams(32, 1 << 16).validate()  # the widest layout still fits the modulus


def test_keys_generated_by_two_parties_work_and_shares_serialise_strictly() -> None:
    params = RlweParams(8, 4)
    seed = bytes(range(32))
    hub, b_hub = keygen_share("hub", seed)
    dec, b_dec = keygen_share("decryptor", seed)
    pk = public_key_from_parts(params, seed, [b_hub, b_dec])
    again = rlwe.RlwePublicKey.from_bytes(params, seed, pk.b_bytes())
    restored = RlweKeyShare.from_bytes("hub", hub.to_bytes())
    assert (restored.s == hub.s).all() and restored.seed == seed
    encrypted = add_ciphertexts(params, [again.encrypt_vector([255, 0, 1])] * 4)
    opened = combine_partials(pk.params, encrypted, [restored.partial_decrypt(params, encrypted),
                                              dec.partial_decrypt(params, encrypted)], 3)
    assert opened == [1020, 0, 4]
    with pytest.raises(MalformedError):
        RlweKeyShare.from_bytes("hub", hub.to_bytes()[:-1])
    with pytest.raises(MalformedError):
        RlweKeyShare.from_bytes("hub", hub.to_bytes()[:-1] + b"\x07")
    with pytest.raises(MalformedError):
        rlwe.RlwePublicKey.from_bytes(params, seed, pk.b_bytes()[:-4])
