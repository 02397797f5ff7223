"""The hub's model registry: trained models signed inside the key store, versioned, audited.

A device trusts models signed by the hub's ``learn-model-signing`` Ed25519
key (:data:`MODEL_KEY_LABEL`, made in the hub's key store on first use; the
private key never leaves it) and verifies each artifact with
:func:`iotguard.learn.verify_artifact` before running it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from iotguard.audit import AuditEvent, AuditSink
from iotguard.clock import Clock
from iotguard.errors import ConfigError, IntegrityError
from iotguard.hub.stores.models import ModelRecord, ModelStore
from iotguard.keys.keystore import KeyKind, KeyStore
from iotguard.learn.artifact import ModelArtifact, endorsement_message, sign_artifact
from iotguard.learn.model import Model, NDArrays

__all__ = ["MODEL_KEY_LABEL", "ModelService"]

#: Key-store label of the key that signs model artifacts.
MODEL_KEY_LABEL = "learn-model-signing"
_PUBLISH_ATTEMPTS = 3


class ModelService:
    """Publishes signed model versions and lists them."""

    def __init__(self, store: ModelStore, keystore: KeyStore, audit: AuditSink, clock: Clock, *,
                 endorse: Callable[[bytes], bytes] | None = None) -> None:
        self._store, self._keystore, self._audit, self._clock = store, keystore, audit, clock
        self._endorse = endorse

    def signing_key(self) -> bytes:
        """Raw Ed25519 public key devices verify model artifacts with."""
        if not self._keystore.has_key(MODEL_KEY_LABEL):
            self._keystore.generate(MODEL_KEY_LABEL, KeyKind.ED25519)
        return self._keystore.public_key(MODEL_KEY_LABEL)

    def endorsement(self) -> bytes:
        """The fleet CA's signature over the model-signing key (devices pin the CA, not this key).

        Raises:
            ConfigError: this service was built without the CA.
        """
        if self._endorse is None:
            raise ConfigError("model registry has no fleet CA to endorse its key")
        return self._endorse(endorsement_message(self.signing_key()))

    def publish(self, name: str, model: Model, parameters: NDArrays, *, metrics: Mapping[str, float], source: str,
                actor: str) -> ModelRecord:
        """Sign ``parameters`` as the next version of ``name`` and store it.

        Raises:
            MalformedError: bad name, metrics or parameters (the artifact would not verify).
            IntegrityError: other publishers kept taking the next version.
        """
        self.signing_key()
        if not source or len(source) > 256:
            raise ConfigError("model source must be 1..256 characters")
        for _ in range(_PUBLISH_ATTEMPTS):
            version = self._store.latest_version(name) + 1
            artifact = sign_artifact(ModelArtifact(name, version, model, parameters, dict(metrics)),
                                     lambda m: self._keystore.sign(MODEL_KEY_LABEL, m))
            now = self._clock.now()
            record = ModelRecord(name, version, hashlib.sha256(artifact).hexdigest(), model.size(),
                                 {k: float(v) for k, v in metrics.items()}, source, artifact, actor, now)
            try:
                self._store.add(record)
            except IntegrityError:
                continue
            self._audit.record(AuditEvent("model.published", now, actor, name,
                                          {"version": version, "sha256": record.sha256, "source": source,
                                           "parameters": record.parameters}))
            return record
        raise IntegrityError(f"could not take a new version of model {name}")

    def get(self, name: str, version: int | None = None) -> ModelRecord:
        """One published version (the latest by default).

        Raises:
            ConfigError: no such model or version (code ``unknown_model``).
        """
        record = self._store.get(name, version)
        if record is None:
            raise ConfigError(f"no model {name}" + ("" if version is None else f" version {version}"),
                              code="unknown_model")
        return record

    def list(self) -> list[ModelRecord]:
        """Every published version."""
        return self._store.list()
