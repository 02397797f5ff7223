"""The ascon-aead128 cipher suite behind the AeadSuite interface."""

from __future__ import annotations

import pytest

from iotguard.crypto import AeadSuite, AsconAead128Suite, OpenRequest, ascon, get_suite, suite_names
from iotguard.errors import ConfigError, IntegrityError, MalformedError


def test_suite_is_registered_by_name_and_id() -> None:
    suite = get_suite("ascon-aead128")
    assert isinstance(suite, AsconAead128Suite)
    assert isinstance(suite, AeadSuite)
    assert get_suite(4) is suite
    assert "ascon-aead128" in suite_names()
    assert (suite.key_size, suite.nonce_size, suite.tag_size) == (16, 16, 16)
    assert 0 < suite.max_messages <= 2**32


def test_suite_round_trip() -> None:
    suite = get_suite("ascon-aead128")
    key, nonce = bytes(range(16)), bytes(16)
    sealed = suite.seal(key, nonce, b"hdr", b"reading")
    assert sealed == ascon.aead_encrypt(key, nonce, b"hdr", b"reading")
    assert suite.open(key, nonce, b"hdr", sealed) == b"reading"
    with pytest.raises(IntegrityError):
        suite.open(key, nonce, b"hdr2", sealed)


def test_suite_open_batch_isolates_a_forged_tag() -> None:
    """Check for a forged tag inside a batch: only that envelope is rejected."""
    suite = get_suite("ascon-aead128")
    requests = []
    for i in range(100):
        key = bytes([i]) * 16
        nonce = (2**64 + i).to_bytes(16, "big")
        ad = b"dev|%d" % i
        sealed = suite.seal(key, nonce, ad, b"payload-%d" % i)
        if i in (0, 42):
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
        requests.append(OpenRequest(key, nonce, ad, sealed))
    results = suite.open_batch(requests)
    for i, result in enumerate(results):
        if i in (0, 42):
            assert isinstance(result, IntegrityError)
        else:
            assert result == b"payload-%d" % i


def test_open_batch_of_nothing() -> None:
    assert get_suite("ascon-aead128").open_batch([]) == []


def test_xof_length_limits() -> None:
    with pytest.raises(ConfigError):
        ascon.xof128(b"", -1)
    with pytest.raises(ConfigError):
        ascon.xof128_batch([b""], ascon.MAX_XOF_OUTPUT + 1)
    assert ascon.xof128(b"abc", 0) == b""


def test_customization_longer_than_2048_bits_is_rejected() -> None:
    ascon.cxof128(b"", 16, bytes(256))
    with pytest.raises(MalformedError):
        ascon.cxof128(b"", 16, bytes(257))
    with pytest.raises(MalformedError):
        ascon.cxof128_batch([b""], 16, [bytes(257)])


def test_long_messages_take_the_scalar_path_inside_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ascon.batch, "MAX_BATCH_MESSAGE_SIZE", 100)
    messages = [bytes(range(256)) * i for i in (0, 1, 2)]
    assert ascon.hash256_batch(messages) == [ascon.hash256(m) for m in messages]
    assert ascon.cxof128_batch(messages, 40, b"z") == [ascon.cxof128(m, 40, b"z") for m in messages]
    keys, nonces, ads = [bytes(16)] * 3, [bytes(range(16))] * 3, [b"a" * 300, b"", b"b"]
    sealed = ascon.aead_encrypt_batch(keys, nonces, ads, messages)
    assert sealed == [ascon.aead_encrypt(*item) for item in zip(keys, nonces, ads, messages, strict=True)]
    forged = [*sealed[:2], sealed[2][:-1] + b"\x00"]
    opened = ascon.aead_decrypt_batch(keys, nonces, ads, forged)
    assert opened[:2] == messages[:2]
    assert isinstance(opened[2], IntegrityError)


def test_batches_split_into_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunk and buffer budgets: uniform and mixed batches over several chunks."""
    monkeypatch.setattr(ascon.batch, "BATCH_CHUNK_LANES", 128)
    monkeypatch.setattr(ascon.batch, "BATCH_BUFFER_BYTES", 64 * 200)
    count = 700
    keys = [i.to_bytes(16, "big") for i in range(count)]
    nonces = [bytes(16)] * count
    for ads, plaintexts in (
        ([b"hdr"] * count, [bytes([i % 256]) * 64 for i in range(count)]),
        ([b"h" * (i % 40) for i in range(count)], [bytes([i % 256]) * (i % 333) for i in range(count)]),
    ):
        sealed = ascon.aead_encrypt_batch(keys, nonces, ads, plaintexts)
        assert sealed == [ascon.aead_encrypt(*item) for item in zip(keys, nonces, ads, plaintexts, strict=True)]
        assert ascon.aead_decrypt_batch(keys, nonces, ads, sealed) == plaintexts
    messages = [bytes(i % 300) for i in range(count)]
    assert ascon.hash256_batch(messages) == [ascon.hash256(m) for m in messages]
