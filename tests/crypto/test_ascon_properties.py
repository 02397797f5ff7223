"""Property tests: the batched Ascon equals the scalar Ascon, message by message.

The scalar form is itself pinned to the official known-answer vectors
(test_ascon_kat.py); these tests drive the batched form through random
lengths 0..4096 bytes, mixed in one batch, where its grouping of unequal
lengths could go wrong.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotguard.crypto import ascon
from iotguard.errors import IntegrityError

MAX_LEN = 4096

_messages = st.binary(min_size=0, max_size=MAX_LEN)
# Batches of up to 4 KiB messages are larger than Hypothesis likes by default.
_LARGE = [HealthCheck.data_too_large, HealthCheck.too_slow]
_short = st.binary(min_size=0, max_size=80)
_aead_item = st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), _short, _messages)


@settings(max_examples=25, deadline=None, suppress_health_check=_LARGE)
@given(st.lists(_aead_item, min_size=1, max_size=12))
def test_batch_seal_and_open_equal_scalar(items: list[tuple[bytes, bytes, bytes, bytes]]) -> None:
    keys, nonces, ads, plaintexts = (list(column) for column in zip(*items, strict=True))
    expected = [ascon.aead_encrypt(*item) for item in items]
    assert ascon.aead_encrypt_batch(keys, nonces, ads, plaintexts) == expected
    assert ascon.aead_decrypt_batch(keys, nonces, ads, expected) == plaintexts


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(_short, st.integers(min_value=0, max_value=300)), min_size=1, max_size=150),
    st.sets(st.integers(min_value=0, max_value=149)),
)
def test_mixed_length_batch_with_forgeries(lengths: list[tuple[bytes, int]], forged: set[int]) -> None:
    """Many lanes of mixed lengths; forged ones fail alone, wherever they sit."""
    n = len(lengths)
    keys = [i.to_bytes(16, "little") for i in range(n)]
    nonces = [(7 * i).to_bytes(16, "big") for i in range(n)]
    ads = [ad for ad, _ in lengths]
    plaintexts = [bytes([i % 256]) * size for i, (_, size) in enumerate(lengths)]
    sealed = ascon.aead_encrypt_batch(keys, nonces, ads, plaintexts)
    assert sealed == [ascon.aead_encrypt(*a) for a in zip(keys, nonces, ads, plaintexts, strict=True)]
    bad = {i for i in forged if i < n}
    tampered = [bytes([c[0] ^ 0x80]) + c[1:] if i in bad else c for i, c in enumerate(sealed)]
    for i, result in enumerate(ascon.aead_decrypt_batch(keys, nonces, ads, tampered)):
        if i in bad:
            assert isinstance(result, IntegrityError)
        else:
            assert result == plaintexts[i]


@settings(max_examples=20, deadline=None, suppress_health_check=_LARGE)
@given(st.lists(_messages, min_size=1, max_size=10))
def test_hash256_batch_equals_scalar(messages: list[bytes]) -> None:
    assert ascon.hash256_batch(messages) == [ascon.hash256(m) for m in messages]


@settings(max_examples=15, deadline=None, suppress_health_check=_LARGE)
@given(st.lists(_messages, min_size=1, max_size=8), st.integers(min_value=0, max_value=100))
def test_xof128_batch_equals_scalar(messages: list[bytes], length: int) -> None:
    assert ascon.xof128_batch(messages, length) == [ascon.xof128(m, length) for m in messages]


@settings(max_examples=15, deadline=None, suppress_health_check=_LARGE)
@given(
    st.lists(st.tuples(_messages, st.binary(max_size=256)), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=80),
)
def test_cxof128_batch_equals_scalar(items: list[tuple[bytes, bytes]], length: int) -> None:
    messages = [m for m, _ in items]
    names = [z for _, z in items]
    assert ascon.cxof128_batch(messages, length, names) == [ascon.cxof128(m, length, z) for m, z in items]
    shared = names[0]
    assert ascon.cxof128_batch(messages, length, shared) == [ascon.cxof128(m, length, shared) for m in messages]


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_customization_separates_domains(message: bytes, name: bytes) -> None:
    assert ascon.cxof128(message, 32, name) != ascon.cxof128(message, 32, name + b"\x00")


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=1, max_value=130),
    st.integers(min_value=0, max_value=70),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=0, max_value=2**32),
)
def test_uniform_batch_equals_scalar(count: int, ad_size: int, size: int, seed: int) -> None:
    """Batches whose messages all have one shape take the uniform fast path."""
    rng = random.Random(seed)
    keys = [rng.randbytes(16) for _ in range(count)]
    nonces = [rng.randbytes(16) for _ in range(count)]
    ads = [rng.randbytes(ad_size) for _ in range(count)]
    plaintexts = [rng.randbytes(size) for _ in range(count)]
    expected = [ascon.aead_encrypt(*item) for item in zip(keys, nonces, ads, plaintexts, strict=True)]
    assert ascon.aead_encrypt_batch(keys, nonces, ads, plaintexts) == expected
    assert ascon.aead_decrypt_batch(keys, nonces, ads, expected) == plaintexts
