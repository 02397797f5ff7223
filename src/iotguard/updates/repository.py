"""The firmware TUF repository: metadata built and signed with python-tuf.

Roles and keys (TUF specification, section 2):

- ``root``: offline keys kept outside the hub (``iotguard firmware keys
  init``), threshold signing; it names every other role's keys.
- ``targets``: an offline release-manager key; it signs nothing but one
  terminating delegation per device model (``<model>/*``).
- ``<model>``: that model's release key signs its releases (target files with
  the :class:`~iotguard.updates.release.FirmwareRelease` custom field).
- ``snapshot`` and ``timestamp``: one online key in the hub's key store
  (:class:`~iotguard.updates.signer.KeyStoreSigner`); a stolen online key can
  freeze or mix metadata only until expiry and never sign software.

Snapshots are consistent: every metadata file is served under its version
(``3.snapshot.json``) and every image under its hash, so a client never
mixes files of two repository states. This module does no I/O: it produces
the file map (:meth:`FirmwareRepository.files`) that the hub serves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from iotguard.errors import ConfigError, MalformedError, RollbackError
from iotguard.updates.model_target import MODEL_TARGET_SUFFIX, ModelTarget, model_versions
from iotguard.updates.release import MODEL_PATTERN, FirmwareRelease, target_path

__all__ = ["ExpiryPolicy", "FirmwareRepository"]

_SERIALIZER = JSONSerializer(compact=True)


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=180)
    model: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if min(self.root, self.targets, self.model, self.snapshot, self.timestamp) <= timedelta(0):
            raise ConfigError("metadata expiry must be positive")


def _sign(md: Metadata[Any], signers: Sequence[Signer]) -> None:
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)


class FirmwareRepository:
    """A TUF repository for firmware, kept in memory as signed metadata.

    Every mutating method takes the signers it needs, so the offline keys are
    only present for the operations that require them.
    """

    def __init__(self, root: Metadata[Root], targets: Metadata[Targets], expiry: ExpiryPolicy) -> None:
        self._expiry = expiry
        self._roots: list[Metadata[Root]] = [root]
        self._targets = targets
        self._models: dict[str, Metadata[Targets]] = {}
        self._images: dict[str, bytes] = {}
        self._files: dict[str, bytes] = {}
        self._snapshot: Metadata[Snapshot] | None = None
        self._timestamp: Metadata[Timestamp] | None = None
        self._put(f"{root.signed.version}.root.json", root)
        self._put(f"{targets.signed.version}.targets.json", targets)

    @classmethod
    def create(
        cls,
        *,
        root_signers: Sequence[Signer],
        root_threshold: int,
        targets_signer: Signer,
        online_signer: Signer,
        now: datetime,
        expiry: ExpiryPolicy | None = None,
    ) -> FirmwareRepository:
        """Create version 1 of every role, signed.

        Raises:
            ConfigError: the threshold cannot be met by the root keys, or a
                root key doubles as another role's key.
        """
        expiry = expiry or ExpiryPolicy()
        keyids = {s.public_key.keyid for s in root_signers}
        if len(keyids) != len(root_signers) or not 1 <= root_threshold <= len(keyids):
            raise ConfigError("root threshold must be between 1 and the number of distinct root keys")
        if keyids & {targets_signer.public_key.keyid, online_signer.public_key.keyid}:
            raise ConfigError("root keys must not sign other roles")
        root = Root(expires=now + expiry.root, consistent_snapshot=True)
        for signer in root_signers:
            root.add_key(signer.public_key, Root.type)
        root.roles[Root.type].threshold = root_threshold
        root.add_key(targets_signer.public_key, Targets.type)
        root.add_key(online_signer.public_key, Snapshot.type)
        root.add_key(online_signer.public_key, Timestamp.type)
        root_md = Metadata(root)
        _sign(root_md, root_signers)
        targets = Targets(expires=now + expiry.targets)
        targets.delegations = Delegations(keys={}, roles={})
        targets_md = Metadata(targets)
        _sign(targets_md, [targets_signer])
        repo = cls(root_md, targets_md, expiry)
        repo.refresh_online(online_signer, now)
        return repo

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], expiry: ExpiryPolicy | None = None) -> FirmwareRepository:
        """Rebuild a repository from the file map :meth:`files` returned (the hub's stored state).

        Every role's newest version is taken; older versions stay served.

        Raises:
            MalformedError: the map lacks a role or a role does not parse.
        """
        def newest(role: str) -> bytes:
            versions = [int(n.split("/")[1].split(".", 1)[0]) for n in files
                        if n.startswith("metadata/") and n.endswith(f".{role}.json")
                        and n.split("/")[1].split(".", 1)[0].isdigit()]
            if not versions:
                raise MalformedError(f"repository has no {role} metadata")
            return files[f"metadata/{max(versions)}.{role}.json"]

        try:
            root_versions = sorted(
                int(n.split("/")[1].split(".", 1)[0]) for n in files
                if n.startswith("metadata/") and n.endswith(".root.json")
            )
            roots = [Metadata[Root].from_bytes(files[f"metadata/{v}.root.json"]) for v in root_versions]
            if not roots:
                raise MalformedError("repository has no root metadata")
            targets = Metadata[Targets].from_bytes(newest(Targets.type))
            repo = cls(roots[0], targets, expiry or ExpiryPolicy())
            repo._roots = roots
            delegations = targets.signed.delegations
            for model in (delegations.roles or {}) if delegations is not None else {}:
                repo._models[model] = Metadata[Targets].from_bytes(newest(model))
            repo._snapshot = Metadata[Snapshot].from_bytes(newest(Snapshot.type))
            repo._timestamp = Metadata[Timestamp].from_bytes(files["metadata/timestamp.json"])
        except (KeyError, ValueError, DeserializationError) as exc:
            raise MalformedError(f"repository files do not parse: {exc}") from exc
        repo._files = dict(files)
        return repo

    @property
    def root(self) -> Root:
        """The newest root."""
        return self._roots[-1].signed

    @property
    def online_expires(self) -> datetime:
        """When the first of snapshot and timestamp expires."""
        assert self._snapshot is not None and self._timestamp is not None
        return min(self._snapshot.signed.expires, self._timestamp.signed.expires)

    def files(self) -> Mapping[str, bytes]:
        """Every file a client may fetch, by URL path relative to the repository.

        Metadata under ``metadata/`` (``<v>.root.json``, ``timestamp.json``,
        ``<v>.snapshot.json``, ``<v>.targets.json``, ``<v>.<model>.json``),
        images under ``targets/<model>/<sha256>.<name>``.
        """
        return dict(self._files)

    def models(self) -> list[str]:
        """The delegated device models."""
        return sorted(self._models)

    def releases(self, model: str) -> list[FirmwareRelease]:
        """The releases currently published for ``model``, oldest first."""
        md = self._model(model)
        out = [
            FirmwareRelease.from_target(t.path, t.length, t.hashes, t.unrecognized_fields.get("custom"))
            for t in md.signed.targets.values() if not t.path.endswith(MODEL_TARGET_SUFFIX)
        ]
        return sorted(out, key=lambda r: r.version)

    def model_targets(self, device_model: str) -> list[ModelTarget]:
        """The trained models published for ``device_model`` (ADR 1303), by name then version."""
        md = self._model(device_model)
        out = [ModelTarget.from_target(t.path, t.length, t.hashes, t.unrecognized_fields.get("custom"))
               for t in md.signed.targets.values() if t.path.endswith(MODEL_TARGET_SUFFIX)]
        return sorted(out, key=lambda m: (m.name, m.version))

    def add_model(
        self, model: str, *, model_signer: Signer, targets_signer: Signer, online_signer: Signer, now: datetime,
    ) -> None:
        """Delegate ``<model>/*`` to ``model_signer``'s key (terminating) and publish an empty role.

        Raises:
            MalformedError: bad model name.
            ConfigError: the model exists already.
        """
        if not MODEL_PATTERN.fullmatch(model) or model in {Root.type, Targets.type, Snapshot.type, Timestamp.type}:
            raise MalformedError(f"bad model name {model!r}")
        if model in self._models:
            raise ConfigError(f"model {model} is already delegated")
        targets = self._targets.signed
        role = DelegatedRole(name=model, keyids=[], threshold=1, terminating=True, paths=[f"{model}/*"])
        assert targets.delegations is not None and targets.delegations.roles is not None
        targets.delegations.roles[model] = role
        targets.add_key(model_signer.public_key, model)
        self._bump(self._targets, targets_signer, now + self._expiry.targets)
        model_md = Metadata(Targets(expires=now + self._expiry.model))
        _sign(model_md, [model_signer])
        self._models[model] = model_md
        self._put(f"1.{model}.json", model_md)
        self.refresh_online(online_signer, now)

    def publish(
        self, release: FirmwareRelease, image: bytes, *, model_signer: Signer, online_signer: Signer, now: datetime,
    ) -> None:
        """Publish ``image`` as ``release``: model role, then snapshot and timestamp.

        Raises:
            MalformedError: the image does not match the release's hash or length.
            RollbackError: the model already has this or a newer version.
            ConfigError: the model is not delegated.
        """
        if len(image) != release.image_length or hashlib.sha256(image).hexdigest() != release.image_sha256:
            raise MalformedError("image does not match the release's hash and length")
        md = self._model(release.model)
        published = self.releases(release.model)
        if published and published[-1].version >= release.version:
            raise RollbackError(f"{release.model} already has version {published[-1].version}")
        target = TargetFile(
            length=release.image_length,
            hashes={"sha256": release.image_sha256},
            path=release.path,
            unrecognized_fields={"custom": release.custom()},
        )
        md.signed.targets[release.path] = target
        self._bump(md, model_signer, now + self._expiry.model)
        directory, _, name = release.path.rpartition("/")
        self._files[f"targets/{directory}/{release.image_sha256}.{name}"] = image
        self.refresh_online(online_signer, now)

    def publish_model(
        self, target: ModelTarget, artifact: bytes, *, model_signer: Signer, online_signer: Signer, now: datetime,
    ) -> None:
        """Publish a trained model's artifact in ``target.device_model``'s role (signed by its release key).

        Raises:
            MalformedError: the artifact does not match the target's hash or length.
            RollbackError: the device model already has this or a newer version of the model.
            ConfigError: the device model is not delegated.
        """
        if len(artifact) != target.length or hashlib.sha256(artifact).hexdigest() != target.sha256:
            raise MalformedError("model artifact does not match the target's hash and length")
        md = self._model(target.device_model)
        published = model_versions(md.signed.targets, target.device_model, target.name)
        if published and published[-1] >= target.version:
            raise RollbackError(f"{target.device_model} already has {target.name} version {published[-1]}")
        md.signed.targets[target.path] = TargetFile(
            length=target.length, hashes={"sha256": target.sha256}, path=target.path,
            unrecognized_fields={"custom": target.custom()},
        )
        self._bump(md, model_signer, now + self._expiry.model)
        directory, _, name = target.path.rpartition("/")
        self._files[f"targets/{directory}/{target.sha256}.{name}"] = artifact
        self.refresh_online(online_signer, now)

    def revoke(self, model: str, version: int, *, model_signer: Signer, online_signer: Signer, now: datetime) -> None:
        """Withdraw a release: clients no longer see it as a target.

        Raises:
            ConfigError: no such model or release.
        """
        md = self._model(model)
        path = target_path(model, version)
        if path not in md.signed.targets:
            raise ConfigError(f"{model} has no release {version}")
        del md.signed.targets[path]
        self._bump(md, model_signer, now + self._expiry.model)
        self.refresh_online(online_signer, now)

    def refresh_online(self, online_signer: Signer, now: datetime) -> None:
        """Sign a new snapshot (every targets role's version) and timestamp."""
        meta = {f"{Targets.type}.json": MetaFile(self._targets.signed.version)}
        for name, md in self._models.items():
            meta[f"{name}.json"] = MetaFile(md.signed.version)
        version = 1 if self._snapshot is None else self._snapshot.signed.version + 1
        snapshot = Metadata(Snapshot(version=version, expires=now + self._expiry.snapshot, meta=meta))
        _sign(snapshot, [online_signer])
        self._snapshot = snapshot
        raw = self._put(f"{version}.snapshot.json", snapshot)
        ts_version = 1 if self._timestamp is None else self._timestamp.signed.version + 1
        snapshot_meta = MetaFile(version, length=len(raw), hashes={"sha256": hashlib.sha256(raw).hexdigest()})
        timestamp = Metadata(
            Timestamp(version=ts_version, expires=now + self._expiry.timestamp, snapshot_meta=snapshot_meta)
        )
        _sign(timestamp, [online_signer])
        self._timestamp = timestamp
        self._put("timestamp.json", timestamp)

    def rotate_root(
        self,
        *,
        old_signers: Sequence[Signer],
        new_signers: Sequence[Signer],
        new_threshold: int,
        now: datetime,
        online_signer: Signer | None = None,
    ) -> None:
        """Publish the next root: new root keys and threshold, optionally a new online key.

        The new root is signed by the old keys (a threshold of them must be
        given) and by every new key, so clients can walk the chain.

        Raises:
            ConfigError: too few old keys, or the new threshold cannot be met.
        """
        current = self.root
        old_ids = {s.public_key.keyid for s in old_signers} & set(current.roles[Root.type].keyids)
        if len(old_ids) < current.roles[Root.type].threshold:
            raise ConfigError("a threshold of the current root keys must sign the new root")
        new_ids = {s.public_key.keyid for s in new_signers}
        if len(new_ids) != len(new_signers) or not 1 <= new_threshold <= len(new_ids):
            raise ConfigError("new root threshold must be between 1 and the number of distinct new keys")
        root = Root.from_dict(current.to_dict())
        root.version = current.version + 1
        root.expires = now + self._expiry.root
        for keyid in list(root.roles[Root.type].keyids):
            root.revoke_key(keyid, Root.type)
        for signer in new_signers:
            root.add_key(signer.public_key, Root.type)
        root.roles[Root.type].threshold = new_threshold
        if online_signer is not None:
            for role in (Snapshot.type, Timestamp.type):
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(online_signer.public_key, role)
        md = Metadata(root)
        signers = {s.public_key.keyid: s for s in [*old_signers, *new_signers]}
        _sign(md, list(signers.values()))
        self._roots.append(md)
        self._put(f"{root.version}.root.json", md)
        if online_signer is not None:
            self.refresh_online(online_signer, now)

    def _model(self, model: str) -> Metadata[Targets]:
        try:
            return self._models[model]
        except KeyError:
            raise ConfigError(f"model {model} is not delegated") from None

    def _bump(self, md: Metadata[Targets], signer: Signer, expires: datetime) -> None:
        md.signed.version += 1
        md.signed.expires = expires
        _sign(md, [signer])
        name = Targets.type if md is self._targets else next(k for k, v in self._models.items() if v is md)
        self._put(f"{md.signed.version}.{name}.json", md)

    def _put(
        self, name: str, md: Metadata[Root] | Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp],
    ) -> bytes:
        raw = md.to_bytes(_SERIALIZER)
        self._files[f"metadata/{name}"] = raw
        return raw
