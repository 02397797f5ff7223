"""The one contract every ``RootOfTrust`` passes: the software secure element and a TPM 2.0 (swtpm)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from iotguard.attestation.quote import parse_quote, verify_signature
from iotguard.errors import IntegrityError, KeyStoreError, RootOfTrustUnsupported
from iotguard.keys import Pkcs11KeyStore, PufKeyStore, SoftwareKeyStore
from iotguard.keys.rot import (
    AttestationKeyAlgorithm,
    QuoteFormat,
    RootOfTrust,
    extend_pcr,
    pcr_composite_digest,
    root_of_trust_of,
)
from iotguard.keys.software_rot import SoftwareRootOfTrust

from .conftest import _PUF_SILICON, BINDING

ZERO = bytes(32)


@dataclass
class Root:
    """A root of trust under test, how to reopen it, and its platform reset."""

    name: str
    open: Callable[[], RootOfTrust]
    power_cycle: Callable[[], None]
    opened: list[RootOfTrust] = field(default_factory=list)

    def root(self) -> RootOfTrust:
        r = self.open()
        self.opened.append(r)
        return r


@pytest.fixture(params=["software", pytest.param("tpm2", marks=pytest.mark.swtpm)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Root]:
    if request.param == "software":

        def open_software() -> RootOfTrust:
            return SoftwareRootOfTrust(SoftwareKeyStore(tmp_path / "se", device_binding=BINDING))

        def cycle() -> None:
            SoftwareRootOfTrust(SoftwareKeyStore(tmp_path / "se", device_binding=BINDING)).power_cycle()

        r = Root("software", open_software, cycle)
    else:
        from iotguard.keys.tpm import TpmRootOfTrust

        tpm = request.getfixturevalue("swtpm")
        r = Root("tpm2", lambda: TpmRootOfTrust(tmp_path / "tpm", tcti=tpm.tcti), tpm.power_cycle)
    yield r
    for opened in r.opened:
        close = getattr(opened, "close", None)
        if close is not None:
            close()


def test_root_satisfies_the_protocol(root: Root) -> None:
    r = root.root()
    assert isinstance(r, RootOfTrust)
    assert r.kind == root.name


def test_pcrs_start_at_zero_and_extend_is_hash_chain(root: Root) -> None:
    r = root.root()
    assert r.pcr_read([0, 4, 10]) == {0: ZERO, 4: ZERO, 10: ZERO}
    a, b = hashlib.sha256(b"bootloader").digest(), hashlib.sha256(b"kernel").digest()
    r.pcr_extend(4, a)
    r.pcr_extend(4, b)
    assert r.pcr_read([4])[4] == extend_pcr(extend_pcr(ZERO, a), b)
    assert r.pcr_read([0])[0] == ZERO


def test_pcrs_survive_reopen_and_reset_only_on_power_cycle(root: Root) -> None:
    digest = hashlib.sha256(b"app").digest()
    root.root().pcr_extend(10, digest)
    assert root.root().pcr_read([10])[10] == extend_pcr(ZERO, digest)
    root.power_cycle()
    assert root.root().pcr_read([10])[10] == ZERO


def test_extend_rejects_bad_index_and_digest(root: Root) -> None:
    r = root.root()
    with pytest.raises(KeyStoreError):
        r.pcr_extend(24, ZERO)
    with pytest.raises(KeyStoreError):
        r.pcr_extend(0, b"\x01" * 20)
    with pytest.raises(KeyStoreError):
        r.pcr_read([])


def test_quote_states_nonce_and_pcr_digest_under_the_ak(root: Root) -> None:
    r = root.root()
    r.pcr_extend(0, hashlib.sha256(b"x").digest())
    ak = r.attestation_key()
    nonce = b"n" * 32
    quote = r.quote(nonce, [10, 0])
    assert quote.pcr_selection == (0, 10)
    assert quote.format is (QuoteFormat.TPM2 if root.name == "tpm2" else QuoteFormat.SOFTWARE)
    verify_signature(ak, ak.algorithm.value, quote.attest, quote.signature)
    info = parse_quote(quote.format.value, quote.attest)
    assert info.nonce == nonce
    assert info.pcr_selection == (0, 10)
    assert info.pcr_digest == pcr_composite_digest(r.pcr_read([0, 10]), [0, 10])


def test_quote_signature_does_not_verify_over_other_bytes(root: Root) -> None:
    r = root.root()
    ak = r.attestation_key()
    quote = r.quote(b"n" * 16, [0])
    altered = bytearray(quote.attest)
    altered[-1] ^= 1
    with pytest.raises(IntegrityError):
        verify_signature(ak, ak.algorithm.value, bytes(altered), quote.signature)


def test_quote_rejects_empty_or_oversized_nonce(root: Root) -> None:
    r = root.root()
    with pytest.raises(KeyStoreError):
        r.quote(b"", [0])
    with pytest.raises(KeyStoreError):
        r.quote(b"n" * 65, [0])


def test_sign_evidence_verifies_with_the_ak(root: Root) -> None:
    r = root.root()
    ak = r.attestation_key()
    assert ak.algorithm in (AttestationKeyAlgorithm.EDDSA, AttestationKeyAlgorithm.ES256)
    data = b"\x84jSignature1" + bytes(range(256)) * 12  # longer than one TPM hash-sequence chunk
    verify_signature(ak, ak.algorithm.value, data, r.sign_evidence(data))


def test_attestation_key_is_stable_across_reopen(root: Root) -> None:
    assert root.root().attestation_key() == root.root().attestation_key()


def test_counters_are_monotonic_and_persistent(root: Root) -> None:
    r = root.root()
    assert r.counter("firmware") == 0
    assert r.advance_counter("firmware", 3) == 3
    assert r.advance_counter("firmware", 1) == 3
    assert root.root().counter("firmware") == 3
    assert r.counter("other") == 0


def test_puf_store_is_not_a_root_of_trust(tmp_path: Path) -> None:
    store = PufKeyStore(_PUF_SILICON, tmp_path / "puf")
    with pytest.raises(RootOfTrustUnsupported) as info:
        root_of_trust_of(store)
    assert info.value.code == "rot_unsupported"
    assert "PufKeyStore" in str(info.value)


@pytest.mark.softhsm
def test_pkcs11_token_is_not_a_root_of_trust(softhsm: object) -> None:
    from .conftest import SoftHsmToken

    assert isinstance(softhsm, SoftHsmToken)
    store = Pkcs11KeyStore(softhsm.module, softhsm.label, softhsm.pin, label_prefix="rot/")
    try:
        with pytest.raises(RootOfTrustUnsupported):
            root_of_trust_of(store)
    finally:
        store.close()


def test_software_key_store_provides_the_software_root(tmp_path: Path) -> None:
    store = SoftwareKeyStore(tmp_path / "se", device_binding=BINDING)
    assert root_of_trust_of(store).kind == "software"
