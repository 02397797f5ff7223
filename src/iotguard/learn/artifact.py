"""Signed model artifacts: what the hub ships to devices, and what a device runs locally.

Wire form (little-endian)::

    "IGM1" | header_len u16 | header (UTF-8 JSON) | parameters (float32) | Ed25519 signature (64)

The header is a JSON object with exactly the keys ``name`` (model name,
``[a-z0-9][a-z0-9._-]{0,63}``), ``version`` (int >= 1), ``features``,
``classes``, ``hidden`` (architecture, see :class:`~iotguard.learn.model.Model`)
and ``metrics`` (an object of at most 16 numbers). The signature covers every
byte before it and is made inside the hub's key store (``sign`` is passed
in; this module does no I/O). :func:`verify_artifact` checks the signature
*before* parsing anything else, then the header and the parameter count
strictly; a device runs only a model that passed it
(:meth:`ModelArtifact.predict`).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotguard.errors import ConfigError, IntegrityError, MalformedError
from iotguard.learn.model import Model, NDArrays, flatten, unflatten

__all__ = ["MAX_ARTIFACT_BYTES", "ModelArtifact", "endorsement_message", "sign_artifact", "verify_artifact",
           "verify_endorsed_artifact"]

MAGIC = b"IGM1"
#: Domain of the fleet CA's endorsement of the hub's model-signing key.
ENDORSEMENT_DOMAIN = b"iotguard-model-signing-key-v1\x00"
SIGNATURE_BYTES = 64
#: Largest artifact a device accepts.
MAX_ARTIFACT_BYTES = 4 * 1024 * 1024 + 4096
MAX_HEADER_BYTES = 4096
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_KEYS = {"name", "version", "features", "classes", "hidden", "metrics"}


@dataclass(frozen=True)
class ModelArtifact:
    """A verified model: name, version, architecture, parameters and the metrics it shipped with."""

    name: str
    version: int
    model: Model
    parameters: NDArrays
    metrics: Mapping[str, float] = field(default_factory=dict)

    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Run the model on the device: the class of each row of ``x``."""
        return self.model.predict(self.parameters, np.asarray(x, dtype=np.float64))


def _header(artifact: ModelArtifact) -> bytes:
    m = artifact.model
    return json.dumps({"name": artifact.name, "version": artifact.version, "features": m.features,
                       "classes": m.classes, "hidden": m.hidden, "metrics": dict(artifact.metrics)},
                      sort_keys=True, separators=(",", ":")).encode()


def sign_artifact(artifact: ModelArtifact, sign: Callable[[bytes], bytes]) -> bytes:
    """Artifact bytes signed by ``sign`` (e.g. ``lambda m: keystore.sign(label, m)``).

    Raises:
        MalformedError: the artifact would not pass :func:`verify_artifact`.
    """
    artifact.model.check(artifact.parameters)
    header = _header(artifact)
    _check_header(json.loads(header))
    body = MAGIC + struct.pack("<H", len(header)) + header + flatten(artifact.parameters).astype("<f4").tobytes()
    signature = sign(body)
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedError("signer did not return an Ed25519 signature", code="artifact_malformed")
    return body + signature


def _check_header(h: object) -> tuple[str, int, Model, dict[str, float]]:
    if not isinstance(h, dict) or set(h) != _KEYS:
        raise MalformedError("artifact header keys", code="artifact_malformed")
    name, version, metrics = h["name"], h["version"], h["metrics"]
    ints = [h["version"], h["features"], h["classes"], h["hidden"]]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise MalformedError("artifact name", code="artifact_malformed")
    if any(type(v) is not int for v in ints) or version < 1:
        raise MalformedError("artifact version or architecture", code="artifact_malformed")
    if (not isinstance(metrics, dict) or len(metrics) > 16
            or any(not isinstance(k, str) or len(k) > 64 or type(v) not in (int, float) for k, v in metrics.items())):
        raise MalformedError("artifact metrics", code="artifact_malformed")
    try:
        model = Model(features=h["features"], classes=h["classes"], hidden=h["hidden"])
    except ConfigError as exc:
        raise MalformedError("artifact architecture out of range", code="artifact_malformed") from exc
    return name, version, model, {k: float(v) for k, v in metrics.items()}


def verify_artifact(data: bytes, public_key: bytes) -> ModelArtifact:
    """The model in ``data`` if the hub's key signed it.

    Raises:
        MalformedError: ``artifact_malformed`` (size, magic, header, parameter count, non-finite values).
        IntegrityError: the signature does not verify (checked before anything else is parsed).
    """
    if not len(MAGIC) + 2 + SIGNATURE_BYTES <= len(data) <= MAX_ARTIFACT_BYTES:
        raise MalformedError("artifact size out of range", code="artifact_malformed")
    body, signature = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, body)
    except (InvalidSignature, ValueError) as exc:
        raise IntegrityError("model artifact signature does not verify") from exc
    if body[:4] != MAGIC:
        raise MalformedError("artifact magic", code="artifact_malformed")
    (hlen,) = struct.unpack_from("<H", body, 4)
    if hlen > MAX_HEADER_BYTES or 6 + hlen > len(body):
        raise MalformedError("artifact header length", code="artifact_malformed")
    try:
        header = json.loads(body[6:6 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedError("artifact header is not JSON", code="artifact_malformed") from exc
    name, version, model, metrics = _check_header(header)
    raw = body[6 + hlen:]
    if len(raw) != 4 * model.size():
        raise MalformedError("artifact parameter count", code="artifact_malformed")
    params = unflatten(np.frombuffer(raw, dtype="<f4").astype(np.float64), model.initial(0))
    model.check(params)
    return ModelArtifact(name, version, model, params, metrics)


def endorsement_message(model_key: bytes) -> bytes:
    """What the fleet CA signs to endorse ``model_key`` as the hub's model-signing key."""
    return ENDORSEMENT_DOMAIN + model_key


def verify_endorsed_artifact(data: bytes, model_key: bytes, endorsement: bytes, ca_public_key: bytes) -> ModelArtifact:
    """:func:`verify_artifact` with a model key the device accepts only if its pinned fleet CA endorsed it.

    Raises:
        IntegrityError: the endorsement or the artifact signature does not verify.
        MalformedError: as :func:`verify_artifact`.
    """
    try:
        Ed25519PublicKey.from_public_bytes(ca_public_key).verify(endorsement, endorsement_message(model_key))
    except (InvalidSignature, ValueError) as exc:
        raise IntegrityError("model-signing key is not endorsed by the fleet CA") from exc
    return verify_artifact(data, model_key)
