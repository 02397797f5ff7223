"""Secure and measured boot: ROM -> bootloader -> kernel -> application -> privacy configuration.

Each stage's image (a file on simulated devices; the mechanism is the one a
real device uses) comes with a signed **manifest** naming the stage, its
version and the SHA-256 of the image. Before a stage runs, the stage before
it:

1. **measures** it: SHA-256 of the image, extended into the stage's PCR of
   the root of trust, and appended to the event log — *before* any check, so
   what was presented is recorded even when it is unexpected (measured boot);
2. **verifies** it: the manifest's Ed25519 signature against the **boot
   anchor** (the firmware signing key's public key, kept sealed in the key
   store so an altered anchor file does not unseal), the manifest's stage
   name, and the image digest. Any failure raises
   :class:`~iotguard.errors.SecureBootError` and the chain stops: the stage
   does not run (secure boot).

The image-set layout is ``<stage>.img`` + ``<stage>.manifest`` per stage
(see :mod:`iotguard.agent.images`, which builds and signs one).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotguard.errors import IntegrityError, KeyStoreError, SecureBootError
from iotguard.keys.keystore import KeyKind, KeyStore
from iotguard.keys.rot import RootOfTrust
from iotguard.wire.eat import BootEvent

__all__ = [
    "BOOT_ANCHOR_LABEL",
    "BOOT_CHAIN",
    "MAX_IMAGE_BYTES",
    "MAX_MANIFEST_BYTES",
    "BootRecord",
    "BootStage",
    "MeasuredBoot",
    "manifest_message",
    "provision_boot_anchor",
]

#: Largest stage image read (bytes).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: Largest manifest read (bytes).
MAX_MANIFEST_BYTES = 4096
#: Label of the AES key in the key store that seals the boot anchor.
BOOT_ANCHOR_LABEL = "iotguard/boot-anchor"
_ANCHOR_AD = b"iotguard boot anchor v1"
_MANIFEST_CONTEXT = "iotguard-boot-manifest/1"
_log = logging.getLogger(__name__)
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:/-]{0,63}")


@dataclass(frozen=True, slots=True)
class BootStage:
    """A stage of the boot chain and the PCR its measurement is extended into."""

    name: str
    pcr: int


#: The chain, in boot order. The ROM is the root of trust for measurement and is not itself measured.
BOOT_CHAIN: tuple[BootStage, ...] = (
    BootStage("bootloader", 0),
    BootStage("kernel", 4),
    BootStage("application", 10),
    BootStage("privacy-configuration", 11),
)


@dataclass(frozen=True, slots=True)
class BootRecord:
    """What a completed boot ran.

    Attributes:
        events: The event log, in extend order.
        firmware_version: Version of the application stage's manifest.
        privacy_config_hash: SHA-256 of the privacy configuration in force.
        pcr_selection: The PCRs the chain extends, ascending.
    """

    events: tuple[BootEvent, ...]
    firmware_version: str
    privacy_config_hash: bytes
    pcr_selection: tuple[int, ...]


def manifest_message(stage: str, version: str, digest: bytes, size: int) -> bytes:
    """The bytes a stage manifest's signature covers (deterministic CBOR)."""
    return cbor2.dumps([_MANIFEST_CONTEXT, stage, version, digest, size], canonical=True)


def provision_boot_anchor(store: KeyStore, firmware_public_key: bytes) -> bytes:
    """Seal the firmware signing key's public key in the key store (at manufacture).

    Returns:
        The sealed anchor blob to keep beside the images; it unseals only in
        this key store, and any change to it fails authentication.

    Raises:
        KeyStoreError: the key is not a 32-byte Ed25519 public key.
    """
    if len(firmware_public_key) != 32:
        raise KeyStoreError("the boot anchor must be a 32-byte Ed25519 public key")
    if not store.has_key(BOOT_ANCHOR_LABEL):
        store.generate(BOOT_ANCHOR_LABEL, KeyKind.AES256)
    return store.seal(BOOT_ANCHOR_LABEL, firmware_public_key, _ANCHOR_AD)


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise SecureBootError(f"{what} unreadable ({exc.strerror})", code="boot_image_missing") from None
    if len(data) > limit:
        raise SecureBootError(f"{what} is larger than {limit} bytes", code="boot_image_too_large")
    return data


class MeasuredBoot:
    """Runs the boot chain over an image set, measuring then verifying each stage.

    Args:
        store: The device's key store (holds the sealed boot anchor's key).
        root: The root of trust whose PCRs record the measurements.
        anchor: The sealed boot anchor from :func:`provision_boot_anchor`.
        chain: The stages, in boot order.
        unsafe_allow_unverified: **Unsafe.** Run stages that fail secure boot
            (measured boot still records them). Models a device whose secure
            boot is disabled or bypassed; for tests and attack simulation
            only. Logged loudly when on.
    """

    def __init__(
        self,
        store: KeyStore,
        root: RootOfTrust,
        anchor: bytes,
        chain: tuple[BootStage, ...] = BOOT_CHAIN,
        *,
        unsafe_allow_unverified: bool = False,
    ) -> None:
        if unsafe_allow_unverified:
            _log.warning("UNSAFE: secure boot is off (unsafe_allow_unverified): unverified stages will run")
        self._unsafe_allow_unverified = unsafe_allow_unverified
        self._store = store
        self._root = root
        self._anchor = anchor
        self._chain = chain
        self.events: list[BootEvent] = []

    def _anchor_key(self) -> Ed25519PublicKey:
        try:
            raw = self._store.unseal(BOOT_ANCHOR_LABEL, self._anchor, _ANCHOR_AD)
        except (IntegrityError, KeyStoreError):
            raise SecureBootError("boot anchor does not unseal in this key store", code="boot_anchor_invalid") from None
        return Ed25519PublicKey.from_public_bytes(raw)

    @staticmethod
    def _parse_manifest(manifest: bytes) -> tuple[list[object], bytes, bytes] | None:
        """``[signed, signature]`` where ``signed`` is :func:`manifest_message`; ``None`` if malformed."""
        try:
            outer = cbor2.loads(manifest)
            if not isinstance(outer, list) or len(outer) != 2:
                return None
            signed, signature = outer
            if not isinstance(signed, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
                return None
            body = cbor2.loads(signed)
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
            return None
        if not isinstance(body, list) or len(body) != 5 or body[0] != _MANIFEST_CONTEXT:
            return None
        return body, signed, signature

    def run_stage(self, stage: BootStage, images: Path, anchor: Ed25519PublicKey) -> tuple[str, bytes]:
        """Measure then verify one stage; returns its version and digest.

        Raises:
            SecureBootError: the stage must not run.
        """
        image = _read(images / f"{stage.name}.img", MAX_IMAGE_BYTES, f"{stage.name} image")
        manifest = _read(images / f"{stage.name}.manifest", MAX_MANIFEST_BYTES, f"{stage.name} manifest")
        digest = hashlib.sha256(image).digest()
        parsed = self._parse_manifest(manifest)
        claimed = parsed[0][2] if parsed is not None else ""
        version = claimed if isinstance(claimed, str) and _VERSION.fullmatch(claimed) else ""
        # Measure first: the event log must show what was presented even if it is refused.
        self._root.pcr_extend(stage.pcr, digest)
        self.events.append(BootEvent(stage.pcr, digest, stage.name, version))
        if parsed is None:
            raise SecureBootError(f"{stage.name}: manifest is malformed", code="boot_manifest_malformed")
        body, signed, signature = parsed
        try:
            anchor.verify(signature, signed)
        except InvalidSignature:
            raise SecureBootError(
                f"{stage.name}: manifest signature is not the firmware key's", code="boot_signature_invalid"
            ) from None
        if body[1] != stage.name:
            raise SecureBootError(f"{stage.name}: manifest is for stage {body[1]!r}", code="boot_stage_mismatch")
        if body[3] != digest or body[4] != len(image):
            raise SecureBootError(f"{stage.name}: image does not match its signed manifest", code="boot_image_mismatch")
        return version, digest

    def boot(self, images: str | os.PathLike[str]) -> BootRecord:
        """Run the whole chain.

        Raises:
            SecureBootError: a stage was refused; :attr:`events` holds what
                was measured up to and including it.
        """
        directory = Path(images)
        anchor = self._anchor_key()
        versions: dict[str, str] = {}
        digests: dict[str, bytes] = {}
        for stage in self._chain:
            try:
                versions[stage.name], digests[stage.name] = self.run_stage(stage, directory, anchor)
            except SecureBootError as exc:
                if not self._unsafe_allow_unverified or exc.code in ("boot_image_missing", "boot_image_too_large"):
                    raise
                _log.warning("UNSAFE: running %s although secure boot refused it (%s)", stage.name, exc.code)
                last = self.events[-1]
                versions[stage.name], digests[stage.name] = last.version, last.digest
        return BootRecord(
            events=tuple(self.events),
            firmware_version=versions.get("application", ""),
            privacy_config_hash=digests.get("privacy-configuration", bytes(32)),
            pcr_selection=tuple(sorted({s.pcr for s in self._chain})),
        )
