"""Chain of custody signed by every party that handles a device (COSE_Sign1 statements).

Each party -- manufacturer, distributor, installer, operator -- holds its own
Ed25519 key in its own key store and signs a custody statement when it hands
the device on: which device (id and a digest of its identity key), who holds
it (the signer), to whom it goes next, when, and the digest of the previous
statement. The statement is the payload of a COSE_Sign1 message (RFC 9052,
``alg`` EdDSA, ``kid`` the party's name) and is logged as an audit event
whose subject is the device, so ``iotguard devices provenance`` proves it
with inclusion proofs.

:func:`verify_custody_chain` accepts a chain only if every required role
signed, in order, each with the key the verifier trusts for that party; each
statement names the next signer; each links the previous one by hash; and
all are about the device with exactly this identity key. A device that
skipped a party, was handed to someone else than named (diverted), or whose
statement is signed by the wrong key is refused with a reason code.

The signing is done inside the key store (the key never leaves it); this
module does no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotguard.audit.events import AuditEvent
from iotguard.errors import CustodyError, MalformedError
from iotguard.keys.keystore import KeyStore

__all__ = [
    "CUSTODY_EVENT",
    "DEFAULT_CUSTODY_CHAIN",
    "MAX_STATEMENT_BYTES",
    "CustodyCheck",
    "CustodyRole",
    "CustodyStatement",
    "Party",
    "custody_event",
    "open_custody_statement",
    "sign_custody_statement",
    "statements_from_events",
    "verify_custody_chain",
]

#: Audit event type of a logged custody statement.
CUSTODY_EVENT = "device.custody_transferred"
#: Largest COSE_Sign1 custody statement accepted.
MAX_STATEMENT_BYTES = 4096
#: Most statements in one device's chain.
MAX_CHAIN_LENGTH = 16
_COSE_SIGN1_TAG = 18
_ALG = 1
_KID = 4
_EDDSA = -8
_FORMAT = 1


class CustodyRole(StrEnum):
    """Who handles a device on its way to the fleet."""

    MANUFACTURER = "manufacturer"
    DISTRIBUTOR = "distributor"
    INSTALLER = "installer"
    OPERATOR = "operator"


#: The roles that must sign, in order, unless configured otherwise.
DEFAULT_CUSTODY_CHAIN = (
    CustodyRole.MANUFACTURER,
    CustodyRole.DISTRIBUTOR,
    CustodyRole.INSTALLER,
    CustodyRole.OPERATOR,
)


class CustodyCheck(Protocol):
    """What enrollment calls to require a verified chain of custody (``hub.custody_gate``)."""

    def check(self, device_id: str, identity_public_key: bytes) -> list[CustodyStatement]:
        """Return the verified chain or raise :class:`~iotguard.errors.CustodyError`."""
        ...


@dataclass(frozen=True)
class Party:
    """A party the verifier trusts: its name, role and Ed25519 public key."""

    name: str
    role: CustodyRole
    public_key: bytes


@dataclass(frozen=True)
class CustodyStatement:
    """One custody transfer, as signed by ``party``."""

    device_id: str
    device_key_sha256: bytes
    party: str
    role: CustodyRole
    next_party: str | None
    time: datetime
    previous: bytes | None

    def to_cbor(self) -> bytes:
        """Canonical CBOR of the statement (the COSE payload)."""
        body = {
            "v": _FORMAT,
            "device": self.device_id,
            "device_key_sha256": self.device_key_sha256,
            "party": self.party,
            "role": self.role.value,
            "next": self.next_party,
            "time": int(self.time.timestamp()),
            "prev": self.previous,
        }
        data: bytes = cbor2.dumps(body, canonical=True)
        return data

    @classmethod
    def from_cbor(cls, data: bytes) -> CustodyStatement:
        """Parse a statement strictly.

        Raises:
            MalformedError: not the canonical statement map.
        """
        try:
            raw = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError):
            raise MalformedError("custody statement is not CBOR") from None
        keys = {"v", "device", "device_key_sha256", "party", "role", "next", "time", "prev"}
        if not isinstance(raw, Mapping) or set(raw) != keys or raw["v"] != _FORMAT:
            raise MalformedError("custody statement has the wrong fields")
        ok = (
            isinstance(raw["device"], str)
            and isinstance(raw["device_key_sha256"], bytes)
            and len(raw["device_key_sha256"]) == 32
            and isinstance(raw["party"], str)
            and (raw["next"] is None or isinstance(raw["next"], str))
            and isinstance(raw["time"], int)
            and 0 <= raw["time"] < 1 << 40
            and (raw["prev"] is None or (isinstance(raw["prev"], bytes) and len(raw["prev"]) == 32))
            and raw["role"] in {r.value for r in CustodyRole}
        )
        if not ok:
            raise MalformedError("custody statement has a malformed field")
        statement = cls(
            raw["device"],
            raw["device_key_sha256"],
            raw["party"],
            CustodyRole(raw["role"]),
            raw["next"],
            datetime.fromtimestamp(raw["time"], tz=UTC),
            raw["prev"],
        )
        if statement.to_cbor() != data:
            raise MalformedError("custody statement is not in canonical form")
        return statement


def _protected(party: str) -> bytes:
    data: bytes = cbor2.dumps({_ALG: _EDDSA, _KID: party.encode()}, canonical=True)
    return data


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    data: bytes = cbor2.dumps(["Signature1", protected, b"", payload])
    return data


def sign_custody_statement(statement: CustodyStatement, keystore: KeyStore, label: str) -> bytes:
    """Sign a statement as a COSE_Sign1 message inside the party's key store."""
    protected = _protected(statement.party)
    payload = statement.to_cbor()
    signature = keystore.sign(label, _sig_structure(protected, payload))
    data: bytes = cbor2.dumps(cbor2.CBORTag(_COSE_SIGN1_TAG, [protected, {}, payload, signature]))
    return data


def _parse_sign1(message: bytes) -> tuple[bytes, dict[Any, Any], bytes, bytes]:
    if len(message) > MAX_STATEMENT_BYTES:
        raise MalformedError("custody statement is too large")
    try:
        tag = cbor2.loads(message)
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        raise MalformedError("custody statement is not CBOR") from None
    if not isinstance(tag, cbor2.CBORTag) or tag.tag != _COSE_SIGN1_TAG:
        raise MalformedError("custody statement is not a tagged COSE_Sign1")
    value = tag.value
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise MalformedError("COSE_Sign1 must have four elements")
    protected, unprotected, payload, signature = value
    if not (
        isinstance(protected, bytes)
        and isinstance(unprotected, Mapping)
        and isinstance(payload, bytes)
        and isinstance(signature, bytes)
    ):
        raise MalformedError("COSE_Sign1 element of the wrong type")
    try:
        headers = cbor2.loads(protected)
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        raise MalformedError("COSE protected header is not CBOR") from None
    if not isinstance(headers, Mapping):
        raise MalformedError("COSE protected header is not a map")
    return protected, dict(headers), payload, signature


def open_custody_statement(message: bytes, trust: Mapping[str, Party]) -> CustodyStatement:
    """Verify a COSE_Sign1 custody statement against the trusted parties.

    Raises:
        MalformedError: not a well-formed statement.
        CustodyError: ``custody_forged`` -- unknown party, wrong algorithm,
            bad signature, or a party signing for a role it does not hold.
    """
    protected, headers, payload, signature = _parse_sign1(message)
    kid = headers.get(_KID)
    if headers.get(_ALG) != _EDDSA or not isinstance(kid, bytes):
        raise CustodyError("custody statement must be EdDSA with a kid", reason="custody_forged")
    party = trust.get(kid.decode(errors="replace"))
    if party is None:
        raise CustodyError("custody statement signed by an unknown party", reason="custody_forged")
    try:
        Ed25519PublicKey.from_public_bytes(party.public_key).verify(signature, _sig_structure(protected, payload))
    except (InvalidSignature, ValueError):
        raise CustodyError(f"custody signature of {party.name} does not verify", reason="custody_forged") from None
    statement = CustodyStatement.from_cbor(payload)
    if statement.party != party.name or statement.role != party.role:
        raise CustodyError(f"{party.name} signed for another party or role", reason="custody_forged")
    return statement


def verify_custody_chain(
    messages: Sequence[bytes],
    device_id: str,
    device_public_key: bytes,
    trust: Mapping[str, Party],
    required: Sequence[CustodyRole] = DEFAULT_CUSTODY_CHAIN,
) -> list[CustodyStatement]:
    """Verify a device's whole chain of custody.

    Args:
        messages: The COSE_Sign1 statements in log order.
        device_id: The device being enrolled.
        device_public_key: The identity key it proved possession of.
        trust: Trusted parties by name.
        required: Roles that must sign, in this order.

    Returns:
        The verified statements.

    Raises:
        CustodyError: ``custody_incomplete`` (a required party did not sign),
            ``custody_forged`` (see :func:`open_custody_statement`),
            ``custody_diverted`` (handed to another party than named, or a
            statement about another device or identity key),
            ``custody_broken`` (statements do not link by hash or go back in time).
        MalformedError: a statement is malformed.
    """
    if not required:
        raise CustodyError("an empty custody requirement is an error", reason="custody_incomplete")
    if len(messages) > MAX_CHAIN_LENGTH:
        raise CustodyError("custody chain is too long", reason="custody_broken")
    key_digest = hashlib.sha256(device_public_key).digest()
    statements: list[CustodyStatement] = []
    previous: bytes | None = None
    for message in messages:
        st = open_custody_statement(message, trust)
        if st.device_id != device_id or st.device_key_sha256 != key_digest:
            raise CustodyError(f"{st.party} vouched for another device or key", reason="custody_diverted")
        if statements:
            before = statements[-1]
            if before.next_party != st.party:
                raise CustodyError(
                    f"{before.party} handed the device to {before.next_party}, not {st.party}",
                    reason="custody_diverted",
                )
            if st.time < before.time:
                raise CustodyError("custody statements go back in time", reason="custody_broken")
        if st.previous != previous:
            raise CustodyError(f"statement of {st.party} does not link the previous one", reason="custody_broken")
        statements.append(st)
        previous = hashlib.sha256(message).digest()
    roles = [s.role for s in statements]
    if roles != list(required):
        raise CustodyError(
            f"custody chain has roles {[r.value for r in roles]}, needs {[r.value for r in required]}",
            reason="custody_incomplete",
        )
    if statements[-1].next_party is not None:
        raise CustodyError(f"{statements[-1].party} handed the device on to someone else", reason="custody_diverted")
    return statements


def custody_event(message: bytes, statement: CustodyStatement) -> AuditEvent:
    """The audit event that logs a signed statement (subject: the device)."""
    return AuditEvent(
        CUSTODY_EVENT,
        statement.time,
        statement.party,
        statement.device_id,
        {"role": statement.role.value, "next": statement.next_party or "", "statement": message},
    )


def statements_from_events(events: Sequence[AuditEvent]) -> list[bytes]:
    """The COSE statements among a device's audit events, in log order."""
    out: list[bytes] = []
    for event in events:
        if event.type == CUSTODY_EVENT:
            message = event.details.get("statement")
            if not isinstance(message, bytes):
                raise MalformedError("custody event without a statement")
            out.append(message)
    return out
