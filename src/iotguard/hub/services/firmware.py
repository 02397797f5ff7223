"""The hub's firmware repository service: TUF metadata kept in a store, online key in the key store.

Offline signers (root, targets, model release keys) are passed into each
operation that needs them and never kept; the online snapshot/timestamp key
is ``tuf-online`` in the hub's key store. Every change is one store save and
one audit event. Two processes publishing at once cannot corrupt the
repository: the loser's save is refused (immutable consistent-snapshot files).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, time
from typing import Protocol

from securesystemslib.signer import Signer
from tuf.api.metadata import Timestamp

from iotguard.attestation import ReferenceRelease, reference_release
from iotguard.audit import AuditEvent, AuditSink
from iotguard.clock import Clock
from iotguard.errors import ConfigError, MalformedError, UpdateRefused
from iotguard.hub.stores.firmware import FirmwareFileStore
from iotguard.keys.keystore import KeyKind, KeyStore
from iotguard.updates import ExpiryPolicy, FirmwareRelease, FirmwareRepository, KeyStoreSigner, ModelTarget

__all__ = ["DEVICE_FILE_PATH", "ONLINE_KEY_LABEL", "FirmwareService", "ReferenceValueSink", "reference_values_of"]

#: Key-store label of the online snapshot/timestamp key.
ONLINE_KEY_LABEL = "tuf-online"
#: The repository files a device may ask for: the top-level roles by version
#: (consistent snapshots), the timestamp, a model's role, a model's image by hash.
DEVICE_FILE_PATH = re.compile(
    r"metadata/timestamp\.json"
    r"|metadata/[1-9][0-9]{0,9}\.(?:root|snapshot|targets)\.json"
    r"|metadata/[1-9][0-9]{0,9}\.(?P<role>[a-z0-9][a-z0-9-]{0,62})\.json"
    r"|targets/(?P<model>[a-z0-9][a-z0-9-]{0,62})/[0-9a-f]{64}\.(?P=model)-[1-9][0-9]{0,9}\.img"
    r"|targets/(?P<owner>[a-z0-9][a-z0-9-]{0,62})/[0-9a-f]{64}\.[a-z0-9][a-z0-9._-]{0,63}-[1-9][0-9]{0,9}\.igm"
)


class ReferenceValueSink(Protocol):
    """Where published releases' measurements go: the attestation verifier's reference values."""

    def add_reference(self, release: ReferenceRelease) -> None:
        """Allow a release's measurements."""
        ...

    def remove_reference(self, model: str, version: str) -> None:
        """Stop allowing a release's measurements."""
        ...


def reference_values_of(release: FirmwareRelease) -> ReferenceRelease | None:
    """The reference values a release publishes (``None`` when it measured no stage).

    The version is the release number in decimal, as the device's evidence claims it.
    """
    if not release.measurements:
        return None
    return reference_release(release.model, str(release.version),
                             {stage: bytes.fromhex(digest) for stage, digest in release.measurements.items()})


class FirmwareService:
    """Publishes, lists and revokes firmware releases in the hub's TUF repository.

    A published release's measurements become the attestation verifier's
    reference values (``reference_values``); a revoked one's are withdrawn.
    Its end-of-support date becomes the model's (``support_dates``, read by
    ``iotguard credentials eos warnings``).
    """

    def __init__(self, files: FirmwareFileStore, keystore: KeyStore, audit: AuditSink, clock: Clock,
                 expiry: ExpiryPolicy | None = None, *, reference_values: ReferenceValueSink | None = None,
                 support_dates: Callable[[str, datetime], None] | None = None) -> None:
        self._files = files
        self._keystore = keystore
        self._audit = audit
        self._clock = clock
        self._expiry = expiry or ExpiryPolicy()
        self._references = reference_values
        self._support_dates = support_dates
        self._saved: list[Callable[[], None]] = []

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change this process saves (caches of served files drop)."""
        self._saved.append(listener)

    def _save(self, files: Mapping[str, bytes]) -> None:
        self._files.save(files)
        for listener in self._saved:
            listener()

    def _online_labels(self) -> list[str]:
        """Key-store labels of every online key generation (``tuf-online``, ``tuf-online-2``, ...)."""
        labels = [ONLINE_KEY_LABEL]
        while self._keystore.has_key(f"{ONLINE_KEY_LABEL}-{len(labels) + 1}"):
            labels.append(f"{ONLINE_KEY_LABEL}-{len(labels) + 1}")
        return labels

    def _online(self, repo: FirmwareRepository | None = None) -> KeyStoreSigner:
        """The online key the repository's root names (the first one when there is no repository yet).

        Raises:
            ConfigError: the key store holds no key the root names.
        """
        if repo is None:
            if not self._keystore.has_key(ONLINE_KEY_LABEL):
                self._keystore.generate(ONLINE_KEY_LABEL, KeyKind.ED25519)
            return KeyStoreSigner(self._keystore, ONLINE_KEY_LABEL)
        named = set(repo.root.roles[Timestamp.type].keyids)
        for label in reversed(self._online_labels()):
            if self._keystore.has_key(label):
                signer = KeyStoreSigner(self._keystore, label)
                if signer.public_key.keyid in named:
                    return signer
        raise ConfigError("the hub's key store holds no online key the repository's root names")

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
        self._save(repo.files())
        self._audit.record(AuditEvent("firmware.repository_created", now, actor, "firmware",
                                      {"root_threshold": root_threshold}))
        return repo.files()["metadata/1.root.json"]

    def add_model(self, model: str, *, model_signer: Signer, targets_signer: Signer, actor: str) -> None:
        """Delegate ``model``'s releases to ``model_signer``'s key."""
        now = self._clock.now()
        repo = self._repository()
        repo.add_model(model, model_signer=model_signer, targets_signer=targets_signer,
                       online_signer=self._online(repo), now=now)
        self._save(repo.files())
        self._audit.record(AuditEvent("firmware.model_delegated", now, actor, model,
                                      {"keyid": model_signer.public_key.keyid}))

    def publish(self, release: FirmwareRelease, image: bytes, *, model_signer: Signer, actor: str) -> None:
        """Publish ``image`` as ``release`` (signed by the model's release key)."""
        now = self._clock.now()
        repo = self._repository()
        repo.publish(release, image, model_signer=model_signer, online_signer=self._online(repo), now=now)
        self._save(repo.files())
        self._audit.record(AuditEvent("firmware.published", now, actor, release.model,
                                      {"version": release.version, "sha256": release.image_sha256,
                                       "length": release.image_length}))
        reference = reference_values_of(release)
        if reference is not None and self._references is not None:
            self._references.add_reference(reference)
        if self._support_dates is not None:
            self._support_dates(release.model, datetime.combine(release.end_of_support, time.max, tzinfo=UTC))

    def has_repository(self) -> bool:
        """Whether the firmware repository was initialised (models then travel through it, ADR 1303)."""
        return self._files.get("metadata/1.root.json") is not None

    def publish_model(self, target: ModelTarget, artifact: bytes, *, model_signer: Signer, actor: str) -> None:
        """Publish a trained model's signed artifact as a target of ``target.device_model``'s role.

        ``model_signer`` is that device model's offline release key: the hub's
        online key cannot sign targets, so this is an operator step
        (``iotguard models publish-tuf``).
        """
        now = self._clock.now()
        repo = self._repository()
        repo.publish_model(target, artifact, model_signer=model_signer, online_signer=self._online(repo), now=now)
        self._save(repo.files())
        self._audit.record(AuditEvent("firmware.model_published", now, actor, target.device_model,
                                      {"name": target.name, "version": target.version, "sha256": target.sha256,
                                       "length": target.length}))

    def model_targets(self, device_model: str) -> list[ModelTarget]:
        """Trained models published for ``device_model`` through the repository."""
        return self._repository().model_targets(device_model)

    def revoke(self, model: str, version: int, *, model_signer: Signer, actor: str) -> None:
        """Withdraw release ``version`` of ``model``."""
        now = self._clock.now()
        repo = self._repository()
        repo.revoke(model, version, model_signer=model_signer, online_signer=self._online(repo), now=now)
        self._save(repo.files())
        self._audit.record(AuditEvent("firmware.revoked", now, actor, model, {"version": version}))
        if self._references is not None:
            self._references.remove_reference(model, str(version))

    def rotate_root(self, *, old_signers: Sequence[Signer], new_signers: Sequence[Signer], new_threshold: int,
                    actor: str) -> int:
        """Publish the next root with new offline root keys; returns its version.

        Raises:
            ConfigError: fewer than the current threshold of old keys, or a bad new threshold.
        """
        now = self._clock.now()
        repo = self._repository()
        repo.rotate_root(old_signers=old_signers, new_signers=new_signers, new_threshold=new_threshold, now=now)
        self._save(repo.files())
        version = int(repo.root.version)
        self._audit.record(AuditEvent("firmware.root_rotated", now, actor, "firmware",
                                      {"version": version, "threshold": new_threshold}))
        return version

    def rotate_online_key(self, *, root_signers: Sequence[Signer], root_threshold: int, actor: str) -> str:
        """Replace the online snapshot/timestamp key: a new key in the hub's key store, named by a new root.

        The root keys stay the same (all of them must be given, since the new
        root lists exactly these); devices follow the root chain to the new
        key, and whatever the old key signs afterwards is refused. Returns the
        new key's id.

        Raises:
            ConfigError: fewer than the current threshold of root keys, or a bad threshold.
        """
        now = self._clock.now()
        repo = self._repository()
        label = f"{ONLINE_KEY_LABEL}-{len(self._online_labels()) + 1}"
        self._keystore.generate(label, KeyKind.ED25519)
        online = KeyStoreSigner(self._keystore, label)
        repo.rotate_root(old_signers=root_signers, new_signers=root_signers, new_threshold=root_threshold, now=now,
                         online_signer=online)
        self._save(repo.files())
        keyid = str(online.public_key.keyid)
        self._audit.record(AuditEvent("firmware.online_key_rotated", now, actor, "firmware",
                                      {"root_version": int(repo.root.version), "keyid": keyid}))
        return keyid

    def releases(self, model: str) -> list[FirmwareRelease]:
        """Published releases of ``model``, oldest first."""
        return self._repository().releases(model)

    def lifecycle_facts(self) -> list[FirmwareRelease]:
        """The newest published release of every model (its end of support and disclosure contact)."""
        if self._files.get("metadata/1.root.json") is None:
            return []
        repo = self._repository()
        newest = [releases[-1] for releases in (repo.releases(m) for m in repo.models()) if releases]
        return sorted(newest, key=lambda r: r.model)

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
        repo.refresh_online(self._online(repo), now)
        self._save(repo.files())
        return True

    def file(self, path: str) -> bytes | None:
        """One repository file for a device, or ``None``."""
        return self._files.get(path)

    def device_file(self, model: str, path: str, *, read: Callable[[str], bytes | None] | None = None) -> bytes:
        """The repository file ``path`` for a device of ``model`` (the ``update_fetch`` request).

        A device reads the top-level metadata and its own model's role and
        images only: another model's releases are none of its business.
        ``read`` fetches the file (default: the store; a caller may cache).

        Raises:
            MalformedError: ``path`` is not a repository file name.
            UpdateRefused: ``update_wrong_model`` for another model's role or
                image; ``update_not_found`` when the file does not exist.
        """
        match = DEVICE_FILE_PATH.fullmatch(path)
        if match is None:
            raise MalformedError("not a firmware repository path")
        owner = match.group("role") or match.group("model") or match.group("owner")
        if owner is not None and owner != model:
            raise UpdateRefused("another model's firmware", code="update_wrong_model")
        body = (read or self._files.get)(path)
        if body is None:
            raise UpdateRefused("no such repository file", code="update_not_found")
        return body
