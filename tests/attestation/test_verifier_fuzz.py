"""Untrusted evidence never crashes the verifier, and no altered token is ever affirming."""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotguard.agent.boot import MeasuredBoot, provision_boot_anchor
from iotguard.agent.evidence import produce_evidence
from iotguard.agent.images import build_image_set
from iotguard.attestation import (
    AttestationResult,
    ReferenceValues,
    Tier,
    Verifier,
    load_appraisal_policy,
    reference_release,
)
from iotguard.keys import SoftwareKeyStore
from iotguard.keys.software_rot import SoftwareRootOfTrust

from .conftest import MODEL, NOW, POLICY

NONCE = b"fuzz nonce 0123456789abcdef01234"


def _setup(tmp: Path) -> tuple[Verifier, bytes, object]:
    key = Ed25519PrivateKey.generate()
    digests = build_image_set(tmp / "images", key.sign, "1.0.0")
    store = SoftwareKeyStore(tmp / "keystore", device_binding=b"fuzz device binding 000001")
    anchor = provision_boot_anchor(store, key.public_key().public_bytes_raw())
    root = SoftwareRootOfTrust(store)
    root.power_cycle()
    token = produce_evidence(root, MeasuredBoot(store, root, anchor).boot(tmp / "images"), NONCE, now=NOW, uptime=5)
    verifier = Verifier(ReferenceValues([reference_release(MODEL, "1.0.0", digests)]), load_appraisal_policy(POLICY))
    return verifier, token, root.attestation_key()


_STATE: dict[str, tuple[Verifier, bytes, object]] = {}


def _state(factory: pytest.TempPathFactory) -> tuple[Verifier, bytes, object]:
    # One device and token per process; a directory is made only for it (not per example: mktemp scans
    # the numbered directories made before it, so one per example made the fuzz tests quadratic).
    if "s" not in _STATE:
        _STATE["s"] = _setup(factory.mktemp("fuzz"))
    return _STATE["s"]


def _appraise(state: tuple[Verifier, bytes, object], token: bytes) -> AttestationResult:
    verifier, _, ak = state
    return verifier.appraise(token, attestation_key=ak, expected_nonce=NONCE, model=MODEL, now=NOW)  # type: ignore[arg-type]


def test_the_unaltered_token_is_affirming(tmp_path_factory: pytest.TempPathFactory) -> None:
    state = _state(tmp_path_factory)
    assert _appraise(state, state[1]).status is Tier.AFFIRMING


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_altered_tokens_are_refused_with_a_reason_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    state = _state(tmp_path_factory)
    token = bytearray(state[1])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(token) - 1))
        token[at] = data.draw(st.integers(0, 255).filter(lambda b, old=token[at]: b != old))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(token)))
        token = token[:cut] + bytearray(data.draw(st.binary(max_size=8)))
    result = _appraise(state, bytes(token))
    assert result.status is Tier.CONTRAINDICATED
    assert result.reasons


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(-80000, 300), inner, max_size=14),
        max_leaves=30,
    )
)
def test_arbitrary_cbor_claims_in_a_signed_envelope_are_refused(
    tmp_path_factory: pytest.TempPathFactory, payload: object
) -> None:
    state = _state(tmp_path_factory)
    outer = cbor2.loads(state[1])
    token = cbor2.dumps(cbor2.CBORTag(18, [outer.value[0], {}, cbor2.dumps(payload), outer.value[3]]))
    assert _appraise(state, token).status is Tier.CONTRAINDICATED
