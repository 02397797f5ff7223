"""The hub's firmware repository service: TUF metadata kept in a store, online key in the key store.

Offline signers (root, targets, model release keys) are passed into each
operation that needs them and never kept; the online snapshot/timestamp key
is ``tuf-online`` in the hub's key store. Every change is one store save and
one audit event. Two processes publishing at once cannot corrupt the
repository: the loser's save is refused (immutable consistent-snapshot files).
"""

from __future__ import annotations

from collections.abc import Sequence

from securesystemslib.signer import Signer

from iotguard.audit import AuditEvent, AuditSink
from iotguard.clock import Clock
from iotguard.errors import ConfigError
from iotguard.hub.stores.firmware import FirmwareFileStore
from iotguard.keys.keystore import KeyKind, KeyStore
from iotguard.updates import ExpiryPolicy, FirmwareRelease, FirmwareRepository, KeyStoreSigner

__all__ = ["ONLINE_KEY_LABEL", "FirmwareService"]

#: Key-store label of the online snapshot/timestamp key.
ONLINE_KEY_LABEL = "tuf-online"


class FirmwareService:
    """Publishes, lists and revokes firmware releases in the hub's TUF repository."""

    def __init__(self, files: FirmwareFileStore, keystore: KeyStore, audit: AuditSink, clock: Clock,
                 expiry: ExpiryPolicy | None = None) -> None:
        self._files = files
        self._keystore = keystore
        self._audit = audit
        self._clock = clock
        self._expiry = expiry or ExpiryPolicy()

    def _online(self) -> KeyStoreSigner:
        if not self._keystore.has_key(ONLINE_KEY_LABEL):
            self._keystore.generate(ONLINE_KEY_LABEL, KeyKind.ED25519)
        return KeyStoreSigner(self._keystore, ONLINE_KEY_LABEL)

    def _repository(self) -> FirmwareRepository:
        files = self._files.load()
        if not files:
            raise ConfigError("no firmware repository; initialise it with the offline keys first")
        return FirmwareRepository.from_files(files, self._expiry)

    def initialise(self, *, root_signers: Sequence[Signer], root_threshold: int, targets_signer: Signer,
                   actor: str) -> bytes:
        """Create the repository; returns the initial root devices trust.

        Raises:
            ConfigError: a repository exists already, or bad thresholds.
        """
        if self._files.get("metadata/1.root.json") is not None:
            raise ConfigError("the firmware repository exists already")
        now = self._clock.now()
        repo = FirmwareRepository.create(root_signers=root_signers, root_threshold=root_threshold,
                                         targets_signer=targets_signer, online_signer=self._online(), now=now,
                                         expiry=self._expiry)
        self._files.save(repo.files())
        self._audit.record(AuditEvent("firmware.repository_created", now, actor, "firmware",
                                      {"root_threshold": root_threshold}))
        return repo.files()["metadata/1.root.json"]

    def add_model(self, model: str, *, model_signer: Signer, targets_signer: Signer, actor: str) -> None:
        """Delegate ``model``'s releases to ``model_signer``'s key."""
        now = self._clock.now()
        repo = self._repository()
        repo.add_model(model, model_signer=model_signer, targets_signer=targets_signer, online_signer=self._online(),
                       now=now)
        self._files.save(repo.files())
        self._audit.record(AuditEvent("firmware.model_delegated", now, actor, model,
                                      {"keyid": model_signer.public_key.keyid}))

    def publish(self, release: FirmwareRelease, image: bytes, *, model_signer: Signer, actor: str) -> None:
        """Publish ``image`` as ``release`` (signed by the model's release key)."""
        now = self._clock.now()
        repo = self._repository()
        repo.publish(release, image, model_signer=model_signer, online_signer=self._online(), now=now)
        self._files.save(repo.files())
        self._audit.record(AuditEvent("firmware.published", now, actor, release.model,
                                      {"version": release.version, "sha256": release.image_sha256,
                                       "length": release.image_length}))

    def revoke(self, model: str, version: int, *, model_signer: Signer, actor: str) -> None:
        """Withdraw release ``version`` of ``model``."""
        now = self._clock.now()
        repo = self._repository()
        repo.revoke(model, version, model_signer=model_signer, online_signer=self._online(), now=now)
        self._files.save(repo.files())
        self._audit.record(AuditEvent("firmware.revoked", now, actor, model, {"version": version}))

    def rotate_root(self, *, old_signers: Sequence[Signer], new_signers: Sequence[Signer], new_threshold: int,
                    actor: str) -> int:
        """Publish the next root with new offline root keys; returns its version.

        Raises:
            ConfigError: fewer than the current threshold of old keys, or a bad new threshold.
        """
        now = self._clock.now()
        repo = self._repository()
        repo.rotate_root(old_signers=old_signers, new_signers=new_signers, new_threshold=new_threshold, now=now)
        self._files.save(repo.files())
        version = int(repo.root.version)
        self._audit.record(AuditEvent("firmware.root_rotated", now, actor, "firmware",
                                      {"version": version, "threshold": new_threshold}))
        return version

    def releases(self, model: str) -> list[FirmwareRelease]:
        """Published releases of ``model``, oldest first."""
        return self._repository().releases(model)

    def refresh_timestamp(self) -> bool:
        """Re-sign snapshot and timestamp once half the timestamp's lifetime is left (maintenance duty).

        Returns whether it re-signed, so devices never see online metadata expire
        while the hub runs, and the stored files do not grow on every tick.
        """
        if self._files.get("metadata/1.root.json") is None:
            return False
        repo = self._repository()
        now = self._clock.now()
        if repo.online_expires - now > self._expiry.timestamp / 2:
            return False
        repo.refresh_online(self._online(), now)
        self._files.save(repo.files())
        return True

    def file(self, path: str) -> bytes | None:
        """One repository file for a device, or ``None``."""
        return self._files.get(path)
