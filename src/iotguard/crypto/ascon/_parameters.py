"""Ascon parameters and the named limits iotguard applies (NIST SP 800-232).

The initial values are those of SP 800-232 (section 4 and 5), not the
Ascon v1.2 values: the IV encodes the algorithm number, rounds, rate and
tag/output size in the standard's little-endian layout.
"""

from __future__ import annotations

__all__ = [
    "AEAD128_IV",
    "AEAD_RATE",
    "CXOF128_IV",
    "DOMAIN_SEPARATION",
    "HASH256_IV",
    "HASH_RATE",
    "KEY_SIZE",
    "MAX_CUSTOMIZATION_SIZE",
    "MAX_MESSAGES_PER_KEY",
    "MAX_XOF_OUTPUT",
    "NONCE_SIZE",
    "TAG_SIZE",
    "XOF128_IV",
]

#: Ascon-AEAD128 initial value (SP 800-232, section 4.1.1).
AEAD128_IV = 0x00001000808C0001
#: Ascon-Hash256 initial value (SP 800-232, section 5.1).
HASH256_IV = 0x0000080100CC0002
#: Ascon-XOF128 initial value (SP 800-232, section 5.2).
XOF128_IV = 0x0000080000CC0003
#: Ascon-CXOF128 initial value (SP 800-232, section 5.3).
CXOF128_IV = 0x0000080000CC0004

#: Ascon-AEAD128 key, nonce and tag sizes in bytes.
KEY_SIZE = 16
NONCE_SIZE = 16
TAG_SIZE = 16
#: Rate of Ascon-AEAD128 in bytes (two state words).
AEAD_RATE = 16
#: Rate of the hash and XOF modes in bytes (one state word).
HASH_RATE = 8
#: Domain separation bit XORed into the last state word after the
#: associated data (the bit ``0^319 || 1`` of SP 800-232).
DOMAIN_SEPARATION = 1 << 63

#: Longest customization string of Ascon-CXOF128: SP 800-232 bounds it at
#: 2048 bits.
MAX_CUSTOMIZATION_SIZE = 256
#: Longest XOF/CXOF output iotguard will produce in one call. The standard
#: allows any length; this bound keeps one request from exhausting memory.
MAX_XOF_OUTPUT = 1 << 20

#: Messages iotguard seals under one Ascon-AEAD128 key before it must be
#: re-keyed. SP 800-232 states Ascon-AEAD128's 128-bit security holds while
#: the data processed under one key stays below 2^54 bytes, with unique
#: nonces. Hub envelopes are small (up to 64 KiB), and 2^32 messages of at
#: most 2^16 bytes is 2^48 bytes, far inside that bound; it also matches the
#: other suites' limit so re-keying cadence does not depend on the suite.
MAX_MESSAGES_PER_KEY = 1 << 32
