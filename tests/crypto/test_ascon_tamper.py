"""Tampering with an Ascon-AEAD128 envelope is always detected.

Each test names one attack. They fail if tag verification is removed: the
tampered envelope would then decrypt to (wrong) plaintext instead of
raising.
"""

from __future__ import annotations

import pytest

from iotguard.crypto import ascon
from iotguard.errors import IntegrityError

KEY = bytes(range(16))
NONCE = bytes(range(16, 32))
AD = b"device-7|telemetry/temp|epoch=3|seq=41"
PLAINTEXT = b'{"t": 21.5, "rh": 40}' * 3


@pytest.fixture
def sealed() -> bytes:
    return ascon.aead_encrypt(KEY, NONCE, AD, PLAINTEXT)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _both_reject(key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> None:
    with pytest.raises(IntegrityError) as caught:
        ascon.aead_decrypt(key, nonce, ad, ciphertext)
    assert caught.value.code == "forged"
    [result] = ascon.aead_decrypt_batch([key], [nonce], [ad], [ciphertext])
    assert isinstance(result, IntegrityError)


def test_untampered_envelope_opens(sealed: bytes) -> None:
    assert ascon.aead_decrypt(KEY, NONCE, AD, sealed) == PLAINTEXT
    assert ascon.aead_decrypt_batch([KEY], [NONCE], [AD], [sealed]) == [PLAINTEXT]


@pytest.mark.parametrize("bit", [0, 7, 100, 8 * len(PLAINTEXT) - 1])
def test_flipped_ciphertext_bit_is_forgery(sealed: bytes, bit: int) -> None:
    _both_reject(KEY, NONCE, AD, _flip(sealed, bit))


@pytest.mark.parametrize("bit", [0, 64, 127])
def test_flipped_tag_bit_is_forgery(sealed: bytes, bit: int) -> None:
    _both_reject(KEY, NONCE, AD, _flip(sealed, 8 * len(PLAINTEXT) + bit))


@pytest.mark.parametrize("bit", [0, 63, 64, 127])
def test_flipped_nonce_bit_is_forgery(sealed: bytes, bit: int) -> None:
    _both_reject(KEY, _flip(NONCE, bit), AD, sealed)


@pytest.mark.parametrize("bit", [0, 9, 8 * len(AD) - 1])
def test_flipped_associated_data_bit_is_forgery(sealed: bytes, bit: int) -> None:
    """Check for a lateral publish: the envelope replayed under another topic."""
    _both_reject(KEY, NONCE, _flip(AD, bit), sealed)


def test_extended_associated_data_is_forgery(sealed: bytes) -> None:
    _both_reject(KEY, NONCE, AD + b"\x00", sealed)
    _both_reject(KEY, NONCE, AD[:-1], sealed)


@pytest.mark.parametrize("cut", [1, 15, 16, 17, len(PLAINTEXT)])
def test_truncated_envelope_is_forgery(sealed: bytes, cut: int) -> None:
    _both_reject(KEY, NONCE, AD, sealed[:-cut])


def test_appended_bytes_are_forgery(sealed: bytes) -> None:
    _both_reject(KEY, NONCE, AD, sealed + b"\x00")


def test_envelope_shorter_than_tag_is_rejected() -> None:
    for length in range(16):
        _both_reject(KEY, NONCE, AD, bytes(length))


def test_wrong_key_is_forgery(sealed: bytes) -> None:
    _both_reject(_flip(KEY, 5), NONCE, AD, sealed)


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_wrong_key_length_is_rejected(sealed: bytes, size: int) -> None:
    _both_reject(bytes(size), NONCE, AD, sealed)
    with pytest.raises(IntegrityError):
        ascon.aead_encrypt(bytes(size), NONCE, AD, PLAINTEXT)


@pytest.mark.parametrize("size", [0, 12, 15, 17])
def test_wrong_nonce_length_is_rejected(sealed: bytes, size: int) -> None:
    _both_reject(KEY, bytes(size), AD, sealed)
    with pytest.raises(IntegrityError):
        ascon.aead_encrypt(KEY, bytes(size), AD, PLAINTEXT)


def test_empty_plaintext_tag_still_authenticates_associated_data() -> None:
    tag_only = ascon.aead_encrypt(KEY, NONCE, AD, b"")
    assert len(tag_only) == 16
    assert ascon.aead_decrypt(KEY, NONCE, AD, tag_only) == b""
    _both_reject(KEY, NONCE, AD + b"!", tag_only)


def test_batch_with_forgeries_returns_the_good_envelopes() -> None:
    """One forged envelope never fails its neighbours, at any position."""
    count = 300
    keys = [bytes([i % 256]) * 16 for i in range(count)]
    nonces = [i.to_bytes(16, "big") for i in range(count)]
    ads = [f"dev-{i}".encode() for i in range(count)]
    plaintexts = [bytes([i % 251]) * (i % 70) for i in range(count)]
    sealed = ascon.aead_encrypt_batch(keys, nonces, ads, plaintexts)
    forged = {0, 1, 63, 64, 65, 150, count - 1}
    tampered = [_flip(c, 3) if i in forged else c for i, c in enumerate(sealed)]
    tampered[10] = tampered[10][:5]  # shorter than a tag
    keys[20] = keys[20][:8]  # wrong key length
    bad = forged | {10, 20}
    results = ascon.aead_decrypt_batch(keys, nonces, ads, tampered)
    assert len(results) == count
    for i, result in enumerate(results):
        if i in bad:
            assert isinstance(result, IntegrityError), i
            assert result.code == "forged"
        else:
            assert result == plaintexts[i], i


def test_uniform_batch_with_forgeries_returns_the_good_envelopes() -> None:
    count = 200
    keys = [bytes([i]) * 16 for i in range(count)]
    nonces = [bytes([255 - i]) * 16 for i in range(count)]
    ads = [bytes(12)] * count
    plaintexts = [bytes([i]) * 64 for i in range(count)]
    sealed = ascon.aead_encrypt_batch(keys, nonces, ads, plaintexts)
    forged = {3, 64, 199}
    tampered = [_flip(c, 70 * 8) if i in forged else c for i, c in enumerate(sealed)]
    results = ascon.aead_decrypt_batch(keys, nonces, ads, tampered)
    for i, result in enumerate(results):
        if i in forged:
            assert isinstance(result, IntegrityError)
        else:
            assert result == plaintexts[i]


def test_batch_inputs_of_different_lengths_are_rejected() -> None:
    with pytest.raises(IntegrityError):
        ascon.aead_decrypt_batch([KEY], [NONCE, NONCE], [AD], [bytes(16)])
