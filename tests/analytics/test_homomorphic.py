"""Packed Paillier with a two-party decryption key: the hub sums ciphertexts it cannot open; the sum is exact;
either key share alone decrypts nothing; malformed ciphertexts and overflowing sums are refused."""

from __future__ import annotations

import math
import random

import pytest

from iotguard.analytics.homomorphic import (
    KeyShare,
    PaillierPublicKey,
    add_ciphertexts,
    combine_partials,
    generate_split_key,
)
from iotguard.cli.main import main
from iotguard.errors import ConfigError, MalformedError


@pytest.fixture(scope="module")
def key() -> tuple[PaillierPublicKey, KeyShare, KeyShare]:
    return generate_split_key(2048, value_bits=20, max_summands=64)


def test_the_hub_sums_ciphertexts_only_and_both_shares_open_the_exact_sum(
        key: tuple[PaillierPublicKey, KeyShare, KeyShare]) -> None:
    pk, hub, decryptor = key
    assert pk.slots == (2048 - 1) // (20 + 6) and pk.slots >= 70  # many values per ciphertext
    rng = random.Random(4)
    values = [[rng.randrange(1 << 20) for _ in range(100)] for _ in range(12)]
    sent = [pk.encrypt_vector(v) for v in values[:8]]  # a third never send: they are simply not in the sum
    assert all(len(c) == math.ceil(100 / pk.slots) for c in sent)
    seen: list[int] = []  # instrumented: everything the hub's sum is given
    for vec in sent:
        seen.extend(vec)
    total = add_ciphertexts(pk, sent)
    plain_values = {v for vec in values for v in vec} | set(pk.pack([x for vec in values for x in vec]))
    assert not plain_values & set(seen)  # no value, and no packed plaintext, is among what the hub holds
    assert all(c >= pk.n for c in seen[:20])  # ciphertexts live in Z_{n^2}
    opened = combine_partials(pk, hub.partial_decrypt(total), decryptor.partial_decrypt(total))
    assert pk.unpack(opened, 100) == [sum(col) for col in zip(*values[:8], strict=True)]
    # either share alone: its "partial" is not the plaintext and does not combine with itself
    alone = hub.partial_decrypt(total)
    assert pk.unpack(alone, 100) != pk.unpack(opened, 100)
    with pytest.raises(MalformedError):
        combine_partials(pk, alone, alone)
    with pytest.raises(MalformedError):
        combine_partials(pk, alone, [x * 2 % pk.n2 for x in decryptor.partial_decrypt(total)])


def test_textbook_paillier_decryption_agrees() -> None:
    """The split key is Paillier: a key whose factors we keep decrypts E(m) the textbook way (L(c^lambda) mu)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    nums = rsa.generate_private_key(65537, 2048).private_numbers()
    p, q = nums.p, nums.q
    n = p * q
    pk = PaillierPublicKey(n)
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    mu = pow(lam, -1, n)
    for m in (0, 1, 12345, n - 1):
        c = pk.encrypt(m)
        assert (pow(c, lam, n * n) - 1) // n * mu % n == m
    c1, c2 = pk.encrypt(40), pk.encrypt(2)
    assert (pow(c1 * c2 % (n * n), lam, n * n) - 1) // n * mu % n == 42


def test_malformed_ciphertexts_and_overflowing_sums_are_refused(
        key: tuple[PaillierPublicKey, KeyShare, KeyShare]) -> None:
    pk, _hub, _d = key
    good = pk.encrypt_vector([1, 2, 3])
    for bad in (0, pk.n2, pk.n, -5):
        with pytest.raises(MalformedError):
            add_ciphertexts(pk, [good, [bad]])
    with pytest.raises(MalformedError):
        add_ciphertexts(pk, [good] * 65)  # max_summands 64: a slot could overflow into its neighbour
    with pytest.raises(MalformedError):
        add_ciphertexts(pk, [])
    with pytest.raises(ConfigError):
        pk.pack([1 << 20])
    with pytest.raises(ConfigError):
        generate_split_key(1024)


def test_cli_runs_both_kinds_of_round(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aggregate", "run", "--secure", "--devices", "12", "--dims", "16", "--json"]) == 0
    assert '"exact": true' in capsys.readouterr().out
    assert main(["aggregate", "run", "--secure", "--devices", "30", "--degree", "12", "--dims", "8",
                 "--dropout", "0.2"]) == 0
    assert "exact=True" in capsys.readouterr().out
    assert main(["aggregate", "run", "--he", "--devices", "3", "--dims", "10"]) == 0
    assert "exact=True" in capsys.readouterr().out


def test_pooled_randomness_is_used_once_and_decrypts(key: tuple[PaillierPublicKey, KeyShare, KeyShare]) -> None:
    """Randomizers precomputed off the hot path: each encryption takes a different one, the sum still opens."""
    from iotguard.analytics.homomorphic import RandomnessPool

    pk, hub, decryptor = key
    pool = RandomnessPool(pk)
    pool.refill(4)
    assert len(pool) == 4
    a = pk.encrypt_vector([7] * 10, pool)
    b = pk.encrypt_vector([7] * 10, pool)
    assert len(pool) == 2 and a != b  # same values, fresh randomness: different ciphertexts
    total = add_ciphertexts(pk, [a, b])
    opened = combine_partials(pk, hub.partial_decrypt(total), decryptor.partial_decrypt(total))
    assert pk.unpack(opened, 10) == [14] * 10
    other, _h, _d = generate_split_key(2048, value_bits=8, max_summands=4)
    with pytest.raises(ConfigError):
        other.encrypt_vector([1], pool)
