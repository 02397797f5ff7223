"""A TPM 2.0 root of trust through ``tpm2-pytss`` (tested against ``swtpm``).

* **PCRs** are the TPM's own SHA-256 bank: ``TPM2_PCR_Read`` and
  ``TPM2_PCR_Extend``; only a platform reset (``_TPM_Init`` +
  ``TPM2_Startup(CLEAR)``) clears them.
* The **attestation key** is a restricted ECDSA P-256 signing key created
  under a storage root key (SRK, an ECC P-256 primary of the owner
  hierarchy, re-created from its template on every start). Its public and
  TPM-wrapped private blobs are kept in ``directory`` (the private blob is
  encrypted by the TPM and useless on another TPM).
* A **quote** is ``TPM2_Quote`` (TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE,
  ``extraData`` = the nonce). Evidence is signed with ``TPM2_Sign`` over the
  SHA-256 of the COSE ``Sig_structure`` together with the hash-check ticket of
  a TPM hash sequence: a restricted key refuses to sign a digest the TPM did
  not compute, and never one of data beginning with ``TPM_GENERATED_VALUE``,
  so evidence cannot impersonate a quote.
* The **endorsement key** (EK) is the one whose manufacturer certificate is
  in the TPM's NV (TCG EK Credential Profile 2.0): the ECC P-256 EK (template
  L-2, certificate at ``0x01c0000a``) if that certificate is there, else the
  RSA-2048 EK (L-1, ``0x01c00002``, which ``swtpm_setup --create-ek-cert``
  writes), else the ECC P-256 EK without a certificate.
  :meth:`TpmRootOfTrust.endorsement_certificate` reads it with ``TPM2_NV_Read``.
* **Counters** are NV counter indices (``TPM2_NV_Increment``), one per name,
  in the owner range 0x01_49_0000 + 16 bits of the name's hash.

``tpm2_pytss`` is imported when a :class:`TpmRootOfTrust` is opened, so the
rest of iotguard runs where ``libtss2`` is not installed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from iotguard.errors import ConfigError, KeyStoreError
from iotguard.fileio import atomic_write
from iotguard.keys.rot import (
    PCR_DIGEST_SIZE,
    AttestationKey,
    AttestationKeyAlgorithm,
    Quote,
    QuoteFormat,
    check_pcr_selection,
)
from iotguard.keys.software_rot import check_nonce

__all__ = [
    "MAX_COUNTER_STEP",
    "MAX_EK_CERTIFICATE_BYTES",
    "MAX_PUBLIC_AREA_BYTES",
    "TPM_MAX_NONCE_BYTES",
    "TpmRootOfTrust",
    "attestation_key_of",
    "check_endorsement_key",
    "endorsement_key_spki",
    "make_ak_credential",
]

#: Largest nonce a TPM2_Quote takes as qualifying data here (a SHA-256 size).
TPM_MAX_NONCE_BYTES = 32
#: Largest marshalled ``TPM2B_PUBLIC`` (EK or AK) accepted from outside (an RSA-4096 area is about 620 bytes).
MAX_PUBLIC_AREA_BYTES = 1024
#: A TPM NV counter moves one step per increment; larger jumps are refused.
MAX_COUNTER_STEP = 4096
#: Largest EK certificate read from NV (a TCG EK certificate index holds one DER certificate).
MAX_EK_CERTIFICATE_BYTES = 4096
# EK types in order of preference, each used when its certificate is in NV (TCG EK Credential Profile, 2.2.1.4).
_EK_TYPES = ("EK-ECC256", "EK-RSA2048")
_NV_BASE = 0x01490000
_AK_PUBLIC = "ak.pub"
_AK_PRIVATE = "ak.priv"
_SEQUENCE_CHUNK = 1024
_PCRS_PER_READ = 8
_TPM_RC_NV_UNINITIALIZED = 0x14A
_TPM_RC_REFERENCE_H0 = 0x910  # a handle names a transient object that is not loaded (after a TPM reset)
_T = TypeVar("_T")


def _selection_text(indices: Iterable[int]) -> str:
    return "sha256:" + ",".join(str(i) for i in indices)


class TpmRootOfTrust:
    """PCRs, attestation key, quotes and NV counters of a TPM 2.0.

    Args:
        directory: Where the AK's public and TPM-wrapped private blobs live
            (created, mode 0700).
        tcti: TCTI configuration, e.g. ``"swtpm:host=127.0.0.1,port=2321"``
            or ``"device:/dev/tpmrm0"``.

    Raises:
        ConfigError: the TCTI string is malformed.
        KeyStoreError: the TPM cannot be reached or refuses the keys.
    """

    kind = "tpm2"

    def __init__(self, directory: str | os.PathLike[str], *, tcti: str) -> None:
        from tpm2_pytss import ESAPI, TCTILdr

        name, _, conf = tcti.partition(":")
        if not name:
            raise ConfigError("TCTI must look like 'swtpm:host=127.0.0.1,port=2321' or 'device:/dev/tpmrm0'")
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._tcti = TCTILdr(name, conf or None)
            self._esapi = ESAPI(self._tcti)
        except Exception as exc:
            raise KeyStoreError(f"cannot open the TPM through TCTI {name!r}: {exc}") from None
        self._srk: Any = None
        self._ak: Any = None
        self._ek_template: tuple[bytes, Any] | None = None
        self._ak_public: AttestationKey | None = None

    def __repr__(self) -> str:
        return f"TpmRootOfTrust({str(self._dir)!r})"

    def close(self) -> None:
        """Flush loaded objects and close the TPM connection."""
        self._forget_keys(flush=True)
        self._esapi.close()
        self._tcti.close()

    def _forget_keys(self, *, flush: bool) -> None:
        from tpm2_pytss import TSS2_Exception

        for handle in (self._ak, self._srk):
            if handle is None:
                continue
            try:
                if flush:
                    self._esapi.flush_context(handle)
                else:
                    self._esapi.tr_close(handle)
            except TSS2_Exception:
                self._esapi.tr_close(handle)
        self._ak = self._srk = None

    def _with_ak(self, operation: Callable[[Any], _T]) -> _T:
        """Run ``operation(ak)``, reloading the AK once if a TPM reset unloaded it."""
        from tpm2_pytss import TSS2_Exception

        try:
            return operation(self._load_keys())
        except TSS2_Exception as exc:
            if (int(exc.rc) & 0xF3F) != _TPM_RC_REFERENCE_H0:
                raise
        self._forget_keys(flush=False)
        return operation(self._load_keys())

    # -- PCRs ----------------------------------------------------------------

    def pcr_read(self, selection: Iterable[int]) -> dict[int, bytes]:
        """Current SHA-256 bank values of the selected PCRs.

        Raises:
            KeyStoreError: an index is out of range.
        """
        from tpm2_pytss.types import TPML_PCR_SELECTION

        indices = check_pcr_selection(selection)
        values: dict[int, bytes] = {}
        for start in range(0, len(indices), _PCRS_PER_READ):
            chunk = indices[start : start + _PCRS_PER_READ]
            _, _, digests = self._esapi.pcr_read(TPML_PCR_SELECTION.parse(_selection_text(chunk)))
            if len(digests) != len(chunk):
                raise KeyStoreError("the TPM did not return every selected PCR")
            for index, digest in zip(chunk, digests, strict=True):
                values[index] = bytes(digest)
        return values

    def pcr_extend(self, index: int, digest: bytes) -> None:
        """``TPM2_PCR_Extend`` of the SHA-256 bank.

        Raises:
            KeyStoreError: bad index or digest length.
        """
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
        from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

        (index,) = check_pcr_selection([index])
        if not isinstance(digest, bytes) or len(digest) != PCR_DIGEST_SIZE:
            raise KeyStoreError(f"a PCR extend takes a {PCR_DIGEST_SIZE}-byte SHA-256 digest")
        value = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        value.digest.sha256 = digest
        self._esapi.pcr_extend(ESYS_TR.PCR0 + index, TPML_DIGEST_VALUES([value]))

    # -- attestation key -------------------------------------------------------

    def _load_keys(self) -> Any:
        from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
        from tpm2_pytss.types import TPM2B_PRIVATE, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

        if self._ak is not None:
            return self._ak
        if self._srk is None:
            srk_template = TPM2B_PUBLIC.parse(
                "ecc256:aes128cfb", objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
            )
            self._srk, _, _, _, _ = self._esapi.create_primary(TPM2B_SENSITIVE_CREATE(), srk_template, ESYS_TR.OWNER)
        public_path, private_path = self._dir / _AK_PUBLIC, self._dir / _AK_PRIVATE
        if public_path.exists() and private_path.exists():
            public, _ = TPM2B_PUBLIC.unmarshal(public_path.read_bytes())
            private, _ = TPM2B_PRIVATE.unmarshal(private_path.read_bytes())
        else:
            attributes = (
                TPMA_OBJECT.RESTRICTED
                | TPMA_OBJECT.SIGN_ENCRYPT
                | TPMA_OBJECT.FIXEDTPM
                | TPMA_OBJECT.FIXEDPARENT
                | TPMA_OBJECT.SENSITIVEDATAORIGIN
                | TPMA_OBJECT.USERWITHAUTH
            )
            template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attributes)
            private, public, _, _, _ = self._esapi.create(self._srk, TPM2B_SENSITIVE_CREATE(), template)
            atomic_write(private_path, private.marshal())
            atomic_write(public_path, public.marshal())
        self._ak = self._esapi.load(self._srk, private, public)
        # Without a resource manager a TPM holds three transient objects; the
        # SRK is needed only to load the AK, and a hash sequence needs a slot.
        self._esapi.flush_context(self._srk)
        self._srk = None
        self._ak_public = AttestationKey(AttestationKeyAlgorithm.ES256, bytes(public.to_der()))
        return self._ak

    def attestation_key(self) -> AttestationKey:
        """The restricted ECDSA P-256 attestation key, created under the SRK on first use."""
        self._load_keys()
        assert self._ak_public is not None
        return self._ak_public

    @staticmethod
    def _ecdsa_scheme() -> Any:
        from tpm2_pytss.constants import TPM2_ALG
        from tpm2_pytss.types import TPMT_SIG_SCHEME

        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        return scheme

    @staticmethod
    def _raw_signature(signature: Any) -> bytes:
        r = bytes(signature.signature.ecdsa.signatureR)
        s = bytes(signature.signature.ecdsa.signatureS)
        return r.rjust(32, b"\0") + s.rjust(32, b"\0")

    def quote(self, nonce: bytes, pcr_selection: Iterable[int]) -> Quote:
        """``TPM2_Quote`` of the selected SHA-256 PCRs with ``nonce`` as qualifying data.

        Raises:
            KeyStoreError: bad selection, or a nonce longer than 32 bytes.
        """
        from tpm2_pytss.types import TPML_PCR_SELECTION

        check_nonce(nonce, TPM_MAX_NONCE_BYTES)
        indices = check_pcr_selection(pcr_selection)
        attest, signature = self._with_ak(
            lambda ak: self._esapi.quote(
                ak, TPML_PCR_SELECTION.parse(_selection_text(indices)), nonce, self._ecdsa_scheme()
            )
        )
        return Quote(QuoteFormat.TPM2, bytes(attest), self._raw_signature(signature), indices)

    def sign_evidence(self, to_be_signed: bytes) -> bytes:
        """ES256 signature (``r || s``) of the AK over ``to_be_signed``, hashed inside the TPM."""
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG

        sequence = self._esapi.hash_sequence_start(b"", TPM2_ALG.SHA256)
        for start in range(0, len(to_be_signed), _SEQUENCE_CHUNK):
            self._esapi.sequence_update(sequence, to_be_signed[start : start + _SEQUENCE_CHUNK])
        digest, ticket = self._esapi.sequence_complete(sequence, b"", ESYS_TR.OWNER)
        signature = self._with_ak(lambda ak: self._esapi.sign(ak, digest, self._ecdsa_scheme(), ticket))
        return self._raw_signature(signature)

    # -- AK certification (TPM2_MakeCredential / TPM2_ActivateCredential) --------

    def endorsement_key(self) -> bytes:
        """Marshalled ``TPM2B_PUBLIC`` of the endorsement key (TCG template L-2 ECC P-256, or L-1 RSA-2048).

        At manufacture this public key (or the EK certificate) is recorded as
        the device's TPM identity; :func:`make_ak_credential` encrypts to it.
        """
        ek = self._create_ek()
        try:
            public, _, _ = self._esapi.read_public(ek)
            return bytes(public.marshal())
        finally:
            self._esapi.flush_context(ek)

    def attestation_key_public_area(self) -> bytes:
        """Marshalled ``TPM2B_PUBLIC`` of the AK (its attributes show it is restricted and fixed to the TPM)."""
        public, _, _ = self._with_ak(lambda ak: self._esapi.read_public(ak))
        return bytes(public.marshal())

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """``TPM2_ActivateCredential``: recover the secret a verifier bound to this EK and this AK.

        Raises:
            KeyStoreError: the credential was not made for this TPM's EK and AK.
        """
        from tpm2_pytss import TSS2_Exception
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
        from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPMT_SYM_DEF

        blob, _ = TPM2B_ID_OBJECT.unmarshal(credential_blob)
        secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        ak = self._load_keys()
        ek = self._create_ek()
        session = None
        try:
            session = self._esapi.start_auth_session(
                ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
            )
            # The EK's policy: PolicySecret(TPM_RH_ENDORSEMENT).
            self._esapi.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            recovered = self._esapi.activate_credential(
                ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=session
            )
            return bytes(recovered)
        except TSS2_Exception as exc:
            raise KeyStoreError(f"credential activation failed: {exc}") from None
        finally:
            if session is not None:
                self._esapi.flush_context(session)
            self._esapi.flush_context(ek)

    def _endorsement(self) -> tuple[bytes, Any]:
        """The EK certificate in NV (``b""`` if none) and the EK template that matches it (read once)."""
        from tpm2_pytss import TSS2_Exception
        from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

        if self._ek_template is None:
            nv_read = NVReadEK(self._esapi)
            defined = self._nv_indices()

            def reader(index: int) -> bytes:
                # Asking the TPM about an index it lacks makes libtss2 log errors; list them first.
                if int(index) not in defined:
                    raise NoSuchIndex(index)
                return bytes(nv_read(index))

            found: tuple[bytes, Any] | None = None
            try:
                for ek_type in _EK_TYPES:
                    certificate, template = create_ek_template(ek_type, reader)  # reads the cert and template
                    if certificate:
                        found = (bytes(certificate), template)
                        break
                if found is None:
                    found = (b"", create_ek_template(_EK_TYPES[0], reader)[1])
            except TSS2_Exception as exc:
                raise KeyStoreError(f"cannot read the EK certificate from TPM NV: {exc}") from None
            if len(found[0]) > MAX_EK_CERTIFICATE_BYTES:
                raise KeyStoreError("the EK certificate in TPM NV is too large")
            self._ek_template = found
        return self._ek_template

    def _nv_indices(self) -> set[int]:
        """The NV indices defined in the TPM (``TPM2_GetCapability(TPM_CAP_HANDLES)``)."""
        from tpm2_pytss.constants import TPM2_CAP, TPM2_HC

        defined: set[int] = set()
        start = int(TPM2_HC.NV_INDEX_FIRST)
        for _ in range(64):  # at most 64 pages
            more, data = self._esapi.get_capability(TPM2_CAP.HANDLES, start, 64)
            handles = [int(h) for h in data.data.handles]
            defined.update(h for h in handles if h >> 24 == 0x01)
            if not more or not handles:
                break
            start = handles[-1] + 1
        return defined

    def endorsement_certificate(self) -> bytes:
        """The manufacturer's EK certificate (DER) from the TPM's NV, ``b""`` if the TPM has none.

        It certifies :meth:`endorsement_key`; the hub checks its chain (ADR 0812).

        Raises:
            KeyStoreError: NV cannot be read, or the certificate is larger than
                :data:`MAX_EK_CERTIFICATE_BYTES`.
        """
        return self._endorsement()[0]

    def _create_ek(self) -> Any:
        from tpm2_pytss.constants import ESYS_TR
        from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE

        template = self._endorsement()[1]
        ek, _, _, _, _ = self._esapi.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
        return ek

    # -- counters ----------------------------------------------------------------

    def _nv_index(self, name: str) -> int:
        return _NV_BASE + int.from_bytes(hashlib.sha256(name.encode()).digest()[:2], "big")

    def _nv_handle(self, name: str, *, create: bool) -> Any:
        from tpm2_pytss import TSS2_Exception
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_NT, TPMA_NV
        from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

        index = self._nv_index(name)
        try:
            return self._esapi.tr_from_tpmpublic(index)
        except TSS2_Exception:
            if not create:
                return None
        attributes = (TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA) | (
            TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT
        )
        public = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attributes, dataSize=8)
        )
        return self._esapi.nv_define_space(b"", public, ESYS_TR.OWNER)

    def counter(self, name: str) -> int:
        """Current value of NV counter ``name`` (0 if never incremented)."""
        from tpm2_pytss import TSS2_Exception

        handle = self._nv_handle(name, create=False)
        if handle is None:
            return 0
        try:
            return int.from_bytes(bytes(self._esapi.nv_read(handle, 8, 0, handle)), "big")
        except TSS2_Exception as exc:
            if (int(exc.rc) & 0xFFF) == _TPM_RC_NV_UNINITIALIZED:
                return 0
            raise KeyStoreError(f"TPM NV read failed: {exc}") from None

    def advance_counter(self, name: str, to_at_least: int) -> int:
        """Increment NV counter ``name`` until it is at least ``to_at_least``.

        Raises:
            KeyStoreError: the jump is larger than :data:`MAX_COUNTER_STEP`.
        """
        current = self.counter(name)
        if to_at_least <= current:
            return current
        if to_at_least - current > MAX_COUNTER_STEP:
            raise KeyStoreError(f"a TPM counter advances by at most {MAX_COUNTER_STEP} per call")
        handle = self._nv_handle(name, create=True)
        while current < to_at_least:
            self._esapi.nv_increment(handle, handle)
            current = self.counter(name)
        return current


_AK_REQUIRED_ATTRIBUTES = ("RESTRICTED", "SIGN_ENCRYPT", "FIXEDTPM", "FIXEDPARENT", "SENSITIVEDATAORIGIN")


def _public_area(data: bytes, what: str, required: tuple[str, ...], forbidden: str) -> Any:
    """Parse one marshalled ``TPM2B_PUBLIC`` (nothing after it) with ``required`` attributes and not ``forbidden``.

    Raises:
        KeyStoreError: too large, does not parse, trailing bytes, or the attributes are wrong.
    """
    from tpm2_pytss.constants import TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC

    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_PUBLIC_AREA_BYTES:
        raise KeyStoreError(f"{what} public area missing or too large")
    try:
        public, used = TPM2B_PUBLIC.unmarshal(data)
    except Exception:
        raise KeyStoreError(f"{what} public area does not parse") from None
    if used != len(data):
        raise KeyStoreError(f"{what} public area has trailing bytes")
    attributes = public.publicArea.objectAttributes
    missing = [name for name in required if not attributes & getattr(TPMA_OBJECT, name)]
    if missing or attributes & getattr(TPMA_OBJECT, forbidden):
        raise KeyStoreError(f"{what} lacks attributes {missing} or has {forbidden}")
    return public


def attestation_key_of(ak_public_area: bytes) -> AttestationKey:
    """The :class:`AttestationKey` of a TPM AK public area, after checking it is a proper AK.

    Raises:
        KeyStoreError: not an ECC P-256 signing key that is restricted, fixed
            to its TPM and generated inside it.
    """
    from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC

    public = _public_area(ak_public_area, "AK", _AK_REQUIRED_ATTRIBUTES, "DECRYPT")
    area = public.publicArea
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        raise KeyStoreError("AK must be an ECC P-256 key")
    return AttestationKey(AttestationKeyAlgorithm.ES256, bytes(public.to_der()))


_EK_REQUIRED_ATTRIBUTES = ("RESTRICTED", "DECRYPT", "FIXEDTPM", "FIXEDPARENT", "SENSITIVEDATAORIGIN")


def check_endorsement_key(ek_public: bytes) -> bytes:
    """Check that ``ek_public`` is the marshalled public area of an endorsement key; return it.

    An EK is a restricted decryption key fixed to its TPM (TCG EK templates);
    :func:`make_ak_credential` encrypts the credential's seed to it.

    Raises:
        KeyStoreError: too large, does not parse (or has trailing bytes), not
            an ECC or RSA key, or lacks an EK's attributes.
    """
    from tpm2_pytss.constants import TPM2_ALG

    public = _public_area(ek_public, "EK", _EK_REQUIRED_ATTRIBUTES, "SIGN_ENCRYPT")
    if public.publicArea.type not in (TPM2_ALG.ECC, TPM2_ALG.RSA):
        raise KeyStoreError("EK must be an ECC or RSA key")
    return ek_public


def endorsement_key_spki(ek_public: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an endorsement key (what its EK certificate certifies).

    Raises:
        KeyStoreError: not an EK public area (:func:`check_endorsement_key`).
    """
    from tpm2_pytss.types import TPM2B_PUBLIC

    check_endorsement_key(ek_public)
    try:
        return bytes(TPM2B_PUBLIC.unmarshal(ek_public)[0].to_der())
    except Exception:
        raise KeyStoreError("EK public key cannot be converted") from None


def make_ak_credential(ek_public: bytes, ak_public_area: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """``TPM2_MakeCredential`` in software: bind ``secret`` to an EK and an AK name.

    Only the TPM that holds the EK, *and* has the AK with exactly this public
    area loaded, recovers ``secret`` (:meth:`TpmRootOfTrust.activate_credential`).
    The enrolling side records :func:`attestation_key_of` the AK once the
    device has proved it.

    Returns:
        ``(credential_blob, encrypted_secret)``, both marshalled.

    Raises:
        KeyStoreError: the AK is not a proper AK, or the EK does not parse.
    """
    from tpm2_pytss.types import TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential

    attestation_key_of(ak_public_area)
    check_endorsement_key(ek_public)
    if not 16 <= len(secret) <= 32:
        raise KeyStoreError("credential secret must be 16 to 32 bytes")
    try:
        ek, _ = TPM2B_PUBLIC.unmarshal(ek_public)
        ak, _ = TPM2B_PUBLIC.unmarshal(ak_public_area)
    except Exception:
        raise KeyStoreError("EK or AK public area does not parse") from None
    blob, encrypted = make_credential(ek, secret, ak.get_name())
    return bytes(blob.marshal()), bytes(encrypted.marshal())
