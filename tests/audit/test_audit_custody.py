"""Chain of custody signed by each party (COSE_Sign1), named attacks, and interop with pycose."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from iotguard.audit.custody import (
    CustodyRole,
    CustodyStatement,
    Party,
    open_custody_statement,
    sign_custody_statement,
    verify_custody_chain,
)
from iotguard.errors import CustodyError, MalformedError
from iotguard.keys.keystore import KeyKind
from iotguard.keys.software import SoftwareKeyStore

T0 = datetime(2026, 5, 1, tzinfo=UTC)
DEVICE = "dev-7"
ROUTE = [
    ("acme-factory", CustodyRole.MANUFACTURER),
    ("euro-distrib", CustodyRole.DISTRIBUTOR),
    ("sparky-install", CustodyRole.INSTALLER),
    ("city-operator", CustodyRole.OPERATOR),
]


class Parties:
    """Each party with its own key store (a separate directory, as in separate organisations)."""

    def __init__(self, tmp: Path, names: list[tuple[str, CustodyRole]]) -> None:
        self.keys: dict[str, SoftwareKeyStore] = {}
        self.trust: dict[str, Party] = {}
        for name, role in names:
            ks = SoftwareKeyStore(tmp / "orgs" / name)
            ks.generate("custody", KeyKind.ED25519)
            self.keys[name] = ks
            self.trust[name] = Party(name, role, ks.public_key("custody"))

    def chain(self, device_key: bytes, route: list[tuple[str, CustodyRole]], device: str = DEVICE,
              signer: dict[str, str] | None = None) -> list[bytes]:
        out: list[bytes] = []
        for i, (name, role) in enumerate(route):
            nxt = route[i + 1][0] if i + 1 < len(route) else None
            st = CustodyStatement(device, hashlib.sha256(device_key).digest(), name, role, nxt,
                                  T0 + timedelta(days=i), hashlib.sha256(out[-1]).digest() if out else None)
            ks = self.keys[(signer or {}).get(name, name)]
            out.append(sign_custody_statement(st, ks, "custody"))
        return out


@pytest.fixture
def parties(tmp_path: Path) -> Parties:
    return Parties(tmp_path, [*ROUTE, ("shady-reseller", CustodyRole.INSTALLER)])


DEVICE_KEY = b"\x07" * 32


def test_complete_chain_verifies(parties: Parties) -> None:
    chain = verify_custody_chain(parties.chain(DEVICE_KEY, ROUTE), DEVICE, DEVICE_KEY, parties.trust)
    assert [s.role for s in chain] == [r for _, r in ROUTE]
    assert chain[-1].next_party is None


def test_skipped_party_is_refused(parties: Parties) -> None:
    """Check for a grey-market device: the distributor never signed for it."""
    route = [ROUTE[0], ROUTE[2], ROUTE[3]]
    with pytest.raises(CustodyError) as exc:
        verify_custody_chain(parties.chain(DEVICE_KEY, route), DEVICE, DEVICE_KEY, parties.trust)
    assert exc.value.reason == "custody_incomplete" and exc.value.code == "enrollment_failed"


def test_diverted_device_is_refused(parties: Parties) -> None:
    """Check for a diversion: the distributor shipped to one installer, another one shows up with it."""
    good = parties.chain(DEVICE_KEY, ROUTE)
    detour = parties.chain(DEVICE_KEY, [ROUTE[0], ROUTE[1], ("shady-reseller", CustodyRole.INSTALLER), ROUTE[3]])
    # The diverter reuses the genuine first two statements and signs its own hand-over.
    with pytest.raises(CustodyError) as exc:
        verify_custody_chain([*good[:2], *detour[2:]], DEVICE, DEVICE_KEY, parties.trust)
    assert exc.value.reason == "custody_diverted"  # the distributor named sparky-install, not shady-reseller
    # Had the distributor itself signed the hand-over to the reseller, the chain is genuine.
    verify_custody_chain(detour, DEVICE, DEVICE_KEY, parties.trust)


def test_statement_signed_by_the_wrong_party_is_refused(parties: Parties) -> None:
    """Check for a forged hand-over: the reseller signs in the installer's name with its own key."""
    forged = parties.chain(DEVICE_KEY, ROUTE, signer={"sparky-install": "shady-reseller"})
    with pytest.raises(CustodyError) as exc:
        verify_custody_chain(forged, DEVICE, DEVICE_KEY, parties.trust)
    assert exc.value.reason == "custody_forged"


def test_swapped_device_is_refused(parties: Parties) -> None:
    """Check for a swapped device: a genuine chain, but the enrolling device has another identity key."""
    with pytest.raises(CustodyError) as exc:
        verify_custody_chain(parties.chain(DEVICE_KEY, ROUTE), DEVICE, b"\x08" * 32, parties.trust)
    assert exc.value.reason == "custody_diverted"
    with pytest.raises(CustodyError):
        verify_custody_chain(parties.chain(DEVICE_KEY, ROUTE), "dev-8", DEVICE_KEY, parties.trust)


def test_reordered_or_unlinked_statements_are_refused(parties: Parties) -> None:
    chain = parties.chain(DEVICE_KEY, ROUTE)
    with pytest.raises(CustodyError):
        verify_custody_chain([chain[1], chain[0], *chain[2:]], DEVICE, DEVICE_KEY, parties.trust)
    installer = open_custody_statement(chain[2], parties.trust)
    relinked = replace(installer, previous=b"\x00" * 32)
    unlinked = sign_custody_statement(relinked, parties.keys["sparky-install"], "custody")
    with pytest.raises(CustodyError) as exc:
        verify_custody_chain([*chain[:2], unlinked, chain[3]], DEVICE, DEVICE_KEY, parties.trust)
    assert exc.value.reason == "custody_broken"
    with pytest.raises(CustodyError):
        verify_custody_chain([], DEVICE, DEVICE_KEY, parties.trust)


def test_tampered_or_malformed_statements_are_refused(parties: Parties) -> None:
    message = parties.chain(DEVICE_KEY, ROUTE)[0]
    tag = cbor2.loads(message)
    protected, _, payload, signature = tag.value
    body = dict(cbor2.loads(payload))
    body["next"] = "shady-reseller"
    tampered = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, cbor2.dumps(body, canonical=True), signature]))
    with pytest.raises(CustodyError, match="does not verify"):
        open_custody_statement(tampered, parties.trust)
    for bad in (b"", b"\xff", cbor2.dumps([1, 2]), cbor2.dumps(cbor2.CBORTag(17, tag.value)), b"\x00" * 5000):
        with pytest.raises(MalformedError):
            open_custody_statement(bad, parties.trust)
    unknown = dict(parties.trust)
    del unknown["acme-factory"]
    with pytest.raises(CustodyError):
        open_custody_statement(message, unknown)
    wrong_role = {**parties.trust, "acme-factory": replace(parties.trust["acme-factory"], role=CustodyRole.OPERATOR)}
    with pytest.raises(CustodyError):
        open_custody_statement(message, wrong_role)


def test_statements_interoperate_with_pycose(parties: Parties, tmp_path: Path) -> None:
    """Our COSE_Sign1 is standard: pycose verifies ours, and we verify pycose's."""
    message = parties.chain(DEVICE_KEY, ROUTE)[0]
    tag = cbor2.loads(message)
    decoded = Sign1Message.from_cose_obj([tag.value[0], dict(tag.value[1]), tag.value[2], tag.value[3]], True)
    decoded.key = OKPKey(crv=Ed25519, x=parties.trust["acme-factory"].public_key)
    assert decoded.verify_signature()

    theirs = OKPKey.generate_key(crv=Ed25519)
    st = CustodyStatement(DEVICE, hashlib.sha256(DEVICE_KEY).digest(), "acme-factory",
                          CustodyRole.MANUFACTURER, "euro-distrib", T0, None)
    msg = Sign1Message(phdr={Algorithm: EdDSA, KID: b"acme-factory"}, payload=st.to_cbor())
    msg.key = theirs
    trust = {"acme-factory": Party("acme-factory", CustodyRole.MANUFACTURER, theirs.x)}
    assert open_custody_statement(msg.encode(), trust) == st
