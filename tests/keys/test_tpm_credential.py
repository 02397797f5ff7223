"""AK certification on a TPM (swtpm): MakeCredential to the EK, ActivateCredential with the AK."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotguard.errors import KeyStoreError

pytestmark = pytest.mark.swtpm


@pytest.fixture
def tpm_roots(swtpm: object, tmp_path: Path) -> Iterator[tuple[object, object]]:
    from iotguard.keys.tpm import TpmRootOfTrust

    tcti = swtpm.tcti  # type: ignore[attr-defined]
    first = TpmRootOfTrust(tmp_path / "ak-1", tcti=tcti)
    second = TpmRootOfTrust(tmp_path / "ak-2", tcti=tcti)
    yield first, second
    first.close()
    second.close()


def test_ak_credential_activates_on_the_tpm_holding_ek_and_ak(tpm_roots: tuple[object, object]) -> None:
    from iotguard.keys.tpm import TpmRootOfTrust, attestation_key_of, make_ak_credential

    root, _ = tpm_roots
    assert isinstance(root, TpmRootOfTrust)
    area = root.attestation_key_public_area()
    assert attestation_key_of(area) == root.attestation_key()
    secret = secrets.token_bytes(32)
    blob, encrypted = make_ak_credential(root.endorsement_key(), area, secret)
    assert root.activate_credential(blob, encrypted) == secret


def test_credential_for_a_substituted_ak_does_not_activate(tpm_roots: tuple[object, object]) -> None:
    """A device presents someone else's AK (or a software key) as its TPM AK: the credential names that AK."""
    from iotguard.keys.tpm import TpmRootOfTrust, make_ak_credential

    root, other = tpm_roots
    assert isinstance(root, TpmRootOfTrust) and isinstance(other, TpmRootOfTrust)
    blob, encrypted = make_ak_credential(root.endorsement_key(), other.attestation_key_public_area(), b"s" * 32)
    with pytest.raises(KeyStoreError):
        root.activate_credential(blob, encrypted)


def test_a_key_that_is_not_a_restricted_tpm_key_is_refused_as_ak(tpm_roots: tuple[object, object]) -> None:
    from tpm2_pytss.constants import TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC

    from iotguard.keys.tpm import TpmRootOfTrust, attestation_key_of, make_ak_credential

    root, _ = tpm_roots
    assert isinstance(root, TpmRootOfTrust)
    public, _ = TPM2B_PUBLIC.unmarshal(root.attestation_key_public_area())
    public.publicArea.objectAttributes &= ~TPMA_OBJECT.RESTRICTED
    unrestricted = bytes(public.marshal())
    with pytest.raises(KeyStoreError):
        attestation_key_of(unrestricted)
    with pytest.raises(KeyStoreError):
        make_ak_credential(root.endorsement_key(), unrestricted, b"s" * 32)
    with pytest.raises(KeyStoreError):
        attestation_key_of(b"\x00\x10garbage")
