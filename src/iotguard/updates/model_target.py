"""A trained model delivered as a TUF target of a device model's role (ADR 1303).

A model artifact (``iotguard.learn.artifact``: signed by the hub's model key)
is published in the firmware repository under the delegated role of the
device model that runs it, at ``<device-model>/<name>-<version>.igm``: the
role's existing ``<device-model>/*`` delegation covers it, so no new role or
key is trusted. The target's ``custom`` field carries the model's name and
version and the hub's model-signing key with the fleet CA's endorsement of
it, all signed by the device model's release key, so a device verifies the
artifact's own signature as well (defence in depth) without asking the hub.
This module does no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from iotguard.errors import MalformedError
from iotguard.updates.release import MODEL_PATTERN

__all__ = ["MODEL_TARGET_SUFFIX", "ModelTarget", "model_target_path", "model_versions"]

#: File name suffix of model targets (firmware images end ``.img``).
MODEL_TARGET_SUFFIX = ".igm"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")
_HEX_SIG = re.compile(r"[0-9a-f]{128}")
_MAX_VERSION = 2**31 - 1
_KEYS = {"kind", "name", "version", "signing_key", "endorsement"}
_KIND = "model"


def model_target_path(device_model: str, name: str, version: int) -> str:
    """The TUF target path of model ``name`` version ``version`` for ``device_model``."""
    return f"{device_model}/{name}-{version}{MODEL_TARGET_SUFFIX}"


def model_versions(paths: Iterable[str], device_model: str, name: str) -> list[int]:
    """The versions of ``name`` among target ``paths`` of ``device_model``'s role, ascending."""
    prefix = f"{device_model}/{name}-"
    out = []
    for path in paths:
        if path.startswith(prefix) and path.endswith(MODEL_TARGET_SUFFIX):
            middle = path[len(prefix):-len(MODEL_TARGET_SUFFIX)]
            if middle.isascii() and middle.isdigit() and not middle.startswith("0") and len(middle) <= 10:
                out.append(int(middle))
    return sorted(out)


@dataclass(frozen=True)
class ModelTarget:
    """One model artifact as a target: where, how long, its hash, and the key that signed the artifact.

    Attributes:
        device_model: The device model whose role lists it (``MODEL_PATTERN``).
        name: Model name (the artifact's).
        version: Model version (the artifact's, 1..2**31-1).
        sha256: Hex SHA-256 of the artifact bytes.
        length: Artifact length in bytes.
        signing_key: The hub's raw Ed25519 model-signing key.
        endorsement: The fleet CA's Ed25519 signature endorsing ``signing_key``.
    """

    device_model: str
    name: str
    version: int
    sha256: str
    length: int
    signing_key: bytes
    endorsement: bytes

    def __post_init__(self) -> None:
        if not MODEL_PATTERN.fullmatch(self.device_model):
            raise MalformedError(f"bad device model {self.device_model!r}")
        if not _NAME.fullmatch(self.name):
            raise MalformedError(f"bad model name {self.name!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or not 0 < self.version <= _MAX_VERSION:
            raise MalformedError("model version out of range")
        if not _HEX64.fullmatch(self.sha256):
            raise MalformedError("model artifact hash is not a hex SHA-256")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length <= 0:
            raise MalformedError("model artifact length must be positive")
        if len(self.signing_key) != 32 or len(self.endorsement) != 64:
            raise MalformedError("model signing key or endorsement is not Ed25519")

    @classmethod
    def for_artifact(cls, device_model: str, name: str, version: int, artifact: bytes, *, signing_key: bytes,
                     endorsement: bytes) -> ModelTarget:
        """Describe ``artifact`` bytes as the target of ``name`` v``version`` for ``device_model``."""
        return cls(device_model, name, version, hashlib.sha256(artifact).hexdigest(), len(artifact),
                   signing_key, endorsement)

    @property
    def path(self) -> str:
        """The TUF target path."""
        return model_target_path(self.device_model, self.name, self.version)

    def custom(self) -> dict[str, Any]:
        """The target's ``custom`` field (JSON-ready)."""
        return {"kind": _KIND, "name": self.name, "version": self.version, "signing_key": self.signing_key.hex(),
                "endorsement": self.endorsement.hex()}

    @classmethod
    def from_target(cls, path: str, length: int, hashes: Mapping[str, str], custom: Any) -> ModelTarget:
        """Parse a model target back from verified TUF target info (strictly).

        Raises:
            MalformedError: a field is missing or of the wrong type, or the path does not agree with it.
        """
        if not isinstance(custom, dict) or set(custom) != _KEYS or custom["kind"] != _KIND:
            raise MalformedError("model target custom field has the wrong shape")
        key, endorsement, name = custom["signing_key"], custom["endorsement"], custom["name"]
        if (not isinstance(key, str) or not _HEX_KEY.fullmatch(key) or not isinstance(endorsement, str)
                or not _HEX_SIG.fullmatch(endorsement) or not isinstance(name, str)):
            raise MalformedError("model target key or endorsement malformed")
        device_model = path.split("/", 1)[0]
        target = cls(device_model, name, custom["version"], str(hashes.get("sha256", "")), length,
                     bytes.fromhex(key), bytes.fromhex(endorsement))
        if target.path != path:
            raise MalformedError("model target path does not agree with its custom field")
        return target
