"""Ascon (NIST SP 800-232) against the official known-answer files.

Every entry of the four KAT files in ``tests/vectors/ascon/`` is checked
with the scalar functions and, as one batch per file, with the batched ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from iotguard.crypto import ascon

Entry = dict[str, bytes]


def _parse(path: Path) -> list[Entry]:
    entries: list[Entry] = []
    current: Entry = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            if current:
                entries.append(current)
                current = {}
            continue
        name, _, value = line.partition("=")
        name = name.strip()
        if name != "Count":
            current[name] = bytes.fromhex(value.strip())
    if current:
        entries.append(current)
    return entries


@pytest.fixture(scope="module")
def aead_kat(vectors_dir: Path) -> list[Entry]:
    entries = _parse(vectors_dir / "ascon" / "LWC_AEAD_KAT_128_128.txt")
    assert len(entries) == 1089
    return entries


@pytest.fixture(scope="module")
def hash_kat(vectors_dir: Path) -> list[Entry]:
    entries = _parse(vectors_dir / "ascon" / "LWC_HASH_KAT_128_256.txt")
    assert len(entries) == 1025
    return entries


@pytest.fixture(scope="module")
def xof_kat(vectors_dir: Path) -> list[Entry]:
    entries = _parse(vectors_dir / "ascon" / "LWC_XOF_KAT_128_512.txt")
    assert len(entries) == 1025
    return entries


@pytest.fixture(scope="module")
def cxof_kat(vectors_dir: Path) -> list[Entry]:
    entries = _parse(vectors_dir / "ascon" / "LWC_CXOF_KAT_128_512.txt")
    assert len(entries) == 1089
    return entries


def test_aead_scalar_encrypt_matches_every_entry(aead_kat: list[Entry]) -> None:
    for e in aead_kat:
        assert ascon.aead_encrypt(e["Key"], e["Nonce"], e["AD"], e["PT"]) == e["CT"]


def test_aead_scalar_decrypt_matches_every_entry(aead_kat: list[Entry]) -> None:
    for e in aead_kat:
        assert ascon.aead_decrypt(e["Key"], e["Nonce"], e["AD"], e["CT"]) == e["PT"]


def test_aead_batch_encrypt_matches_every_entry(aead_kat: list[Entry]) -> None:
    sealed = ascon.aead_encrypt_batch(
        [e["Key"] for e in aead_kat],
        [e["Nonce"] for e in aead_kat],
        [e["AD"] for e in aead_kat],
        [e["PT"] for e in aead_kat],
    )
    assert sealed == [e["CT"] for e in aead_kat]


def test_aead_batch_decrypt_matches_every_entry(aead_kat: list[Entry]) -> None:
    opened = ascon.aead_decrypt_batch(
        [e["Key"] for e in aead_kat],
        [e["Nonce"] for e in aead_kat],
        [e["AD"] for e in aead_kat],
        [e["CT"] for e in aead_kat],
    )
    assert opened == [e["PT"] for e in aead_kat]


def test_aead_batch_of_one_entry_at_a_time(aead_kat: list[Entry]) -> None:
    # Single-message batches take the uniform fast path; spot-check it.
    for e in aead_kat[::97]:
        assert ascon.aead_decrypt_batch([e["Key"]], [e["Nonce"]], [e["AD"]], [e["CT"]]) == [e["PT"]]


def test_hash256_scalar_matches_every_entry(hash_kat: list[Entry]) -> None:
    for e in hash_kat:
        assert ascon.hash256(e["Msg"]) == e["MD"]


def test_hash256_batch_matches_every_entry(hash_kat: list[Entry]) -> None:
    assert ascon.hash256_batch([e["Msg"] for e in hash_kat]) == [e["MD"] for e in hash_kat]


def test_xof128_scalar_matches_every_entry(xof_kat: list[Entry]) -> None:
    for e in xof_kat:
        assert ascon.xof128(e["Msg"], len(e["MD"])) == e["MD"]


def test_xof128_batch_matches_every_entry(xof_kat: list[Entry]) -> None:
    assert ascon.xof128_batch([e["Msg"] for e in xof_kat], 64) == [e["MD"] for e in xof_kat]


def test_xof128_shorter_output_is_a_prefix(xof_kat: list[Entry]) -> None:
    e = xof_kat[40]
    assert ascon.xof128(e["Msg"], 13) == e["MD"][:13]
    assert ascon.xof128_batch([e["Msg"]], 13) == [e["MD"][:13]]


def test_cxof128_scalar_matches_every_entry(cxof_kat: list[Entry]) -> None:
    for e in cxof_kat:
        assert ascon.cxof128(e["Msg"], len(e["MD"]), e["Z"]) == e["MD"]


def test_cxof128_batch_matches_every_entry(cxof_kat: list[Entry]) -> None:
    digests = ascon.cxof128_batch([e["Msg"] for e in cxof_kat], 64, [e["Z"] for e in cxof_kat])
    assert digests == [e["MD"] for e in cxof_kat]
