"""The Numba-compiled Ascon-AEAD128 batches against the official vectors and the NumPy form."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from iotguard.crypto import ascon
from iotguard.crypto.aead import OpenRequest
from iotguard.crypto.ascon import AsconAead128Suite, compiled
from iotguard.errors import IntegrityError

Entry = dict[str, bytes]


def _entries(path: Path) -> list[Entry]:
    entries: list[Entry] = []
    current: Entry = {}
    for line in [*path.read_text().splitlines(), ""]:
        name, _, value = line.strip().partition("=")
        if not name:
            if current:
                entries.append(current)
            current = {}
        elif name.strip() != "Count":
            current[name.strip()] = bytes.fromhex(value.strip())
    return entries


@pytest.fixture(scope="module")
def aead_kat(vectors_dir: Path) -> list[Entry]:
    entries = _entries(vectors_dir / "ascon" / "LWC_AEAD_KAT_128_128.txt")
    assert len(entries) == 1089
    return entries


def test_compiled_encrypt_matches_every_entry(aead_kat: list[Entry]) -> None:
    keys, nonces, ads = ([e[f] for e in aead_kat] for f in ("Key", "Nonce", "AD"))
    sealed = compiled.aead_encrypt_batch(keys, nonces, ads, [e["PT"] for e in aead_kat])
    assert sealed == [e["CT"] for e in aead_kat]


def test_compiled_decrypt_matches_every_entry(aead_kat: list[Entry]) -> None:
    keys, nonces, ads = ([e[f] for e in aead_kat] for f in ("Key", "Nonce", "AD"))
    opened = compiled.aead_decrypt_batch(keys, nonces, ads, [e["CT"] for e in aead_kat])
    assert opened == [e["PT"] for e in aead_kat]


def test_compiled_forged_tag_fails_only_itself(aead_kat: list[Entry]) -> None:
    """Check for a forgery: one flipped tag bit is refused and releases no plaintext; neighbours open."""
    cts = [e["CT"] for e in aead_kat]
    victim = 700
    cts[victim] = cts[victim][:-1] + bytes([cts[victim][-1] ^ 0x80])
    flipped_body = 701
    cts[flipped_body] = bytes([cts[flipped_body][0] ^ 1]) + cts[flipped_body][1:]
    opened = compiled.aead_decrypt_batch(
        [e["Key"] for e in aead_kat], [e["Nonce"] for e in aead_kat], [e["AD"] for e in aead_kat], cts
    )
    assert isinstance(opened[victim], IntegrityError) and isinstance(opened[flipped_body], IntegrityError)
    assert [o for i, o in enumerate(opened) if i not in (victim, flipped_body)] == [
        e["PT"] for i, e in enumerate(aead_kat) if i not in (victim, flipped_body)
    ]


def test_compiled_agrees_with_numpy_on_mixed_shapes() -> None:
    rng = random.Random(3)
    n = 700
    keys = [os.urandom(16) for _ in range(n)]
    nonces = [os.urandom(16) for _ in range(n)]
    ads = [os.urandom(rng.choice([0, 1, 7, 8, 15, 16, 17, 48, 100])) for _ in range(n)]
    pts = [os.urandom(rng.choice([0, 1, 8, 15, 16, 17, 64, 1024, 1031])) for _ in range(n)]
    sealed = compiled.aead_encrypt_batch(keys, nonces, ads, pts)
    assert sealed == ascon.aead_encrypt_batch(keys, nonces, ads, pts)
    assert compiled.aead_decrypt_batch(keys, nonces, ads, sealed) == pts


def test_compiled_refuses_bad_lengths_per_item() -> None:
    key, nonce = bytes(16), bytes(16)
    good = ascon.aead_encrypt(key, nonce, b"ad", b"reading")
    out = compiled.aead_decrypt_batch([key, key[:15], key, key], [nonce, nonce, nonce[:8], nonce], [b"ad"] * 4,
                                      [good, good, good, good[:15]])
    assert out[0] == b"reading"
    assert all(isinstance(o, IntegrityError) for o in out[1:])
    with pytest.raises(IntegrityError):
        compiled.aead_decrypt_batch([key], [nonce, nonce], [b""], [good])
    with pytest.raises(IntegrityError):
        compiled.aead_encrypt_batch([key[:3]], [nonce], [b""], [b"x"])


def test_suite_opens_with_the_compiled_form() -> None:
    suite = AsconAead128Suite(compiled=True)
    key, nonce = os.urandom(16), os.urandom(16)
    sealed = suite.seal(key, nonce, b"hdr", b"reading")
    forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
    out = suite.open_batch([OpenRequest(key, nonce, b"hdr", sealed), OpenRequest(key, nonce, b"hdr", forged)])
    assert out[0] == b"reading" and isinstance(out[1], IntegrityError)
