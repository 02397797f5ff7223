"""Signed model artifacts: a device runs only what the hub's key signed, parsed strictly."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from iotguard.errors import IntegrityError, MalformedError
from iotguard.learn.artifact import (
    ModelArtifact,
    endorsement_message,
    sign_artifact,
    verify_artifact,
    verify_endorsed_artifact,
)
from iotguard.learn.data import synthetic_digits
from iotguard.learn.model import Model, sgd

HUB_KEY = Ed25519PrivateKey.generate()
HUB_PUBLIC = HUB_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _trained() -> tuple[ModelArtifact, np.ndarray]:
    data = synthetic_digits(speakers=2, per_class=10, features=8, seed=0)
    model = Model(features=8, classes=10, hidden=6)
    params = sgd(model, model.initial(0), data.x, data.y, epochs=5, batch_size=10, lr=0.1,
                 rng=np.random.default_rng(0))
    return ModelArtifact("digits", 3, model, params, {"accuracy": 0.9}), data.x


def test_device_runs_the_signed_model_with_the_hubs_predictions() -> None:
    artifact, x = _trained()
    blob = sign_artifact(artifact, HUB_KEY.sign)
    on_device = verify_artifact(blob, HUB_PUBLIC)
    assert (on_device.name, on_device.version, on_device.metrics) == ("digits", 3, {"accuracy": 0.9})
    hub_side = artifact.model.predict(artifact.parameters, x)
    assert np.mean(on_device.predict(x) == hub_side) > 0.98  # float32 on the wire


def test_tampered_artifact_is_refused() -> None:
    artifact, _ = _trained()
    blob = bytearray(sign_artifact(artifact, HUB_KEY.sign))
    blob[-100] ^= 1
    with pytest.raises(IntegrityError):
        verify_artifact(bytes(blob), HUB_PUBLIC)


def test_artifact_signed_by_another_key_is_refused() -> None:
    artifact, _ = _trained()
    with pytest.raises(IntegrityError):
        verify_artifact(sign_artifact(artifact, Ed25519PrivateKey.generate().sign), HUB_PUBLIC)


def _signed(header: object, params: bytes) -> bytes:
    h = json.dumps(header).encode()
    body = b"IGM1" + struct.pack("<H", len(h)) + h + params
    return body + HUB_KEY.sign(body)


GOOD = {"name": "m", "version": 1, "features": 2, "classes": 2, "hidden": 0, "metrics": {}}


@pytest.mark.parametrize("header,params", [
    ({**GOOD, "extra": 1}, b"\0" * 24),
    ({**GOOD, "name": "../etc"}, b"\0" * 24),
    ({**GOOD, "version": 0}, b"\0" * 24),
    ({**GOOD, "version": True}, b"\0" * 24),
    ({**GOOD, "features": 10**9}, b"\0" * 24),
    ({**GOOD, "metrics": {"a": "x"}}, b"\0" * 24),
    (GOOD, b"\0" * 20),
    (GOOD, struct.pack("<6f", *([float("nan")] * 6))),
    ([1, 2], b""),
])
def test_signed_but_malformed_artifact_rejected_with_reason(header: object, params: bytes) -> None:
    with pytest.raises(MalformedError) as e:
        verify_artifact(_signed(header, params), HUB_PUBLIC)
    assert e.value.code in ("artifact_malformed", "parameters_not_finite")


def test_short_or_huge_input_rejected_before_verification() -> None:
    with pytest.raises(MalformedError):
        verify_artifact(b"IGM1", HUB_PUBLIC)
    with pytest.raises(MalformedError):
        verify_artifact(b"\0" * (5 * 1024 * 1024), HUB_PUBLIC)


def test_endorsed_artifact_needs_the_fleet_cas_signature_over_the_model_key() -> None:
    artifact, _ = _trained()
    blob = sign_artifact(artifact, HUB_KEY.sign)
    ca = Ed25519PrivateKey.generate()
    ca_public = ca.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    endorsement = ca.sign(endorsement_message(HUB_PUBLIC))
    assert verify_endorsed_artifact(blob, HUB_PUBLIC, endorsement, ca_public).version == 3
    with pytest.raises(IntegrityError):  # endorsed by another CA
        verify_endorsed_artifact(blob, HUB_PUBLIC, Ed25519PrivateKey.generate().sign(endorsement_message(HUB_PUBLIC)),
                                 ca_public)
    with pytest.raises(IntegrityError):  # a CA signature over the bare key, without the endorsement domain
        verify_endorsed_artifact(blob, HUB_PUBLIC, ca.sign(HUB_PUBLIC), ca_public)
