"""The strict ``TPMS_ATTEST`` parser (TPM 2.0 Library Part 2, 10.12.12), on hand-built quotes."""

from __future__ import annotations

import struct

import pytest

from iotguard.attestation import parse_quote
from iotguard.errors import MalformedError

NONCE = bytes(range(32))
DIGEST = b"\xd1" * 32


def _attest(*, magic: int = 0xFF544347, kind: int = 0x8018, signer: bytes = b"\x00\x0b" + b"s" * 32,
            extra: bytes = NONCE, safe: int = 1, banks: int = 1, bank: int = 0x000B,
            bitmap: bytes = bytes((0x11, 0x0C, 0x00)), digest: bytes = DIGEST, tail: bytes = b"") -> bytes:
    return (struct.pack(">IH", magic, kind) + struct.pack(">H", len(signer)) + signer
            + struct.pack(">H", len(extra)) + extra + struct.pack(">QIIBQ", 123, 7, 2, safe, 0x2023)
            + struct.pack(">IHB", banks, bank, len(bitmap)) + bitmap + struct.pack(">H", len(digest)) + digest + tail)


def test_a_quote_parses_to_its_fields() -> None:
    info = parse_quote("tpm2-quote", _attest())
    assert info.nonce == NONCE and info.pcr_digest == DIGEST and info.reset_count == 7
    assert info.pcr_selection == (0, 4, 10, 11)  # bits 0 and 4 of byte 0, bits 2 and 3 of byte 1


@pytest.mark.parametrize("bad", [
    _attest(magic=0xFF544348), _attest(kind=0x8017), _attest(safe=2), _attest(banks=2), _attest(bank=0x0004),
    _attest(bitmap=b"\x11\x0c\x00\x00"), _attest(digest=DIGEST[:20]), _attest(tail=b"\x00"),
    _attest(signer=b"s" * 67), _attest(extra=b"e" * 65), b"", b"\xff\x54\x43",
])
def test_malformed_quotes_are_refused(bad: bytes) -> None:
    with pytest.raises(MalformedError) as info:
        parse_quote("tpm2-quote", bad)
    assert info.value.code == "malformed_quote"


def test_every_truncation_is_refused_never_a_crash() -> None:
    whole = _attest()
    for end in range(len(whole)):
        with pytest.raises(MalformedError):
            parse_quote("tpm2-quote", whole[:end])
