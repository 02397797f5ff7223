"""Remote attestation at the hub: nonces, appraisal, and the posture every decision reads.

A device attests through the device plane (signed ``attest`` requests, so it
works from behind NAT): a request with empty evidence gets a fresh nonce; a
request carrying evidence answers one nonce the hub issued to that device
(single use, expiring). The hub may also issue a nonce itself
(:meth:`AttestationService.challenge`, ``iotguard attest DEVICE``); the
device answers it the same way.

The verifier (:mod:`iotguard.attestation`) appraises the evidence against
the attestation key bound to the device, the reference values and the
appraisal policy of the device's model, all kept in the
:class:`~iotguard.hub.stores.attestation.AttestationStore`. The result sets
the device's trust tier (affirming -> ``verified``, warning -> ``degraded``,
contraindicated -> ``failed``) and, when affirming, its attestation time;
the posture is saved with the audit entry (``attestation.result``) and the
broker access rewrite in one transaction through the outbox, so other hub
processes, the audit log and the broker follow.

A TPM's attestation key must have been certified against the device's
endorsement key (:mod:`~iotguard.hub.services.ak_certification`, ADR 0810);
a software root's key is bound on first use: the first evidence names it in a
request signed by the device's identity key, and every later evidence must be
signed by that key (ADR 0801).
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from iotguard.attestation import (
    AppraisalPolicy,
    AttestationResult,
    ReferenceRelease,
    ReferenceValues,
    Tier,
    Verifier,
    load_appraisal_policy,
)
from iotguard.audit import AuditEvent, EventType
from iotguard.clock import Clock
from iotguard.errors import (
    AttestationError,
    ConfigError,
    IntegrityError,
    IotGuardError,
    MalformedError,
    ReplayError,
    UnknownDeviceError,
)
from iotguard.hub.event_counts import EventCounts
from iotguard.hub.outbox import OutboxMessage, OutboxStore
from iotguard.hub.services.ak_certification import AkCertificationService
from iotguard.hub.services.audit import audit_message
from iotguard.hub.services.consent import CommandChannel
from iotguard.hub.services.device_commands import DeviceCommandPush
from iotguard.hub.services.lifecycle import DeviceLifecycle
from iotguard.hub.services.posture import PostureService
from iotguard.hub.stores.attestation import AttestationStore, StoredAppraisal
from iotguard.hub.stores.devices import DeviceStore
from iotguard.identity import VerifiedRequest
from iotguard.keys.rot import AttestationKey, AttestationKeyAlgorithm

__all__ = ["CHALLENGE_KIND", "NONCE_BYTES", "NONCE_TTL", "TRUST_TIER_OF", "AttestationService", "ChallengePush"]

log = logging.getLogger(__name__)

#: Size of an attestation nonce (a TPM quote's ``extraData`` holds at most 32 bytes).
NONCE_BYTES = 32
#: Outbox kind of a hub-initiated challenge waiting to go out on the device's ``cmd`` topic.
CHALLENGE_KIND = "attest.challenge"
#: How long an issued nonce may be answered.
NONCE_TTL = timedelta(minutes=5)
#: The posture's trust tier for each overall appraisal tier.
TRUST_TIER_OF = {
    Tier.AFFIRMING: "verified",
    Tier.WARNING: "degraded",
    Tier.CONTRAINDICATED: "failed",
    Tier.NONE: "unverified",
}


@functools.lru_cache(maxsize=256)
def _parsed_policy(text: str) -> AppraisalPolicy:
    return load_appraisal_policy(text)


def _attestation_key(algorithm: str, public_key: bytes) -> AttestationKey:
    """An attestation key from a request, checked to be a key of its algorithm.

    Raises:
        MalformedError: unknown algorithm, or a public key that is not one of it.
    """
    try:
        alg = AttestationKeyAlgorithm(algorithm)
        public = load_der_public_key(public_key)
    except ValueError:
        raise MalformedError("attestation key is not a DER public key of a known algorithm") from None
    if alg is AttestationKeyAlgorithm.EDDSA and not isinstance(public, Ed25519PublicKey):
        raise MalformedError("EdDSA attestation key is not Ed25519")
    if alg is AttestationKeyAlgorithm.ES256 and not (
            isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)):
        raise MalformedError("ES256 attestation key is not P-256")
    return AttestationKey(alg, public_key)


class AttestationService:
    """Issues nonces, appraises evidence, and applies the result to the device's posture.

    Args:
        store: Nonces, attestation keys, results, reference values, appraisal policies.
        devices: The device registry (model, status).
        posture: The posture service (trust tier, attestation time, broker access).
        outbox: Where refusals' audit entries go.
        clock: Time source.
        nonce_ttl: How long an issued nonce may be answered.
        on_appraisal: Told of each applied appraisal (device, tier, reasons, time): detection's input.
        certification: AK certification against endorsement keys; built on ``store`` when None.
    """

    def __init__(self, store: AttestationStore, devices: DeviceStore, posture: PostureService, outbox: OutboxStore,
                 clock: Clock, *, nonce_ttl: timedelta = NONCE_TTL,
                 on_appraisal: Callable[[str, str, Sequence[str], datetime], None] | None = None,
                 certification: AkCertificationService | None = None) -> None:
        self.store = store
        self.devices = devices
        self.posture = posture
        self.outbox = outbox
        self.clock = clock
        self.nonce_ttl = nonce_ttl
        self.on_appraisal = on_appraisal
        #: Endorsement keys and TPM attestation-key certification (same store).
        self.certification = certification or AkCertificationService(store, devices, outbox, clock)
        self._stepped_up: dict[str, float] = {}
        self._stepped_up_lock = threading.Lock()
        #: Appraisals by this process: (status, refusal reason or "") -> count (``/metrics``).
        self.appraisals = EventCounts()

    # -- reference values and appraisal policies -------------------------

    def add_reference(self, release: ReferenceRelease) -> None:
        """Allow a firmware release of a model (several versions may be allowed at once)."""
        self.store.add_reference(release, self.clock.now())

    def remove_reference(self, model: str, version: str) -> None:
        """Stop allowing a firmware release of a model (revoked)."""
        self.store.remove_reference(model, version)

    def set_policy(self, model: str, text: str) -> None:
        """Store the appraisal policy of ``model``: a TOML document with exactly one ``[models.<model>]`` table.

        Raises:
            ConfigError: the text does not parse or does not define exactly ``model``.
        """
        parsed = load_appraisal_policy(text)
        if set(parsed.models) != {model}:
            raise ConfigError(f"an appraisal policy text must define exactly [models.{model}]")
        self.store.set_policy(model, text, self.clock.now())

    def verifier(self) -> Verifier:
        """A verifier over the stored reference values and policies (read afresh: other processes add them).

        Policy texts are parsed once per distinct text (an appraisal policy is
        an immutable value), so a re-read costs two queries, not a TOML parse.
        """
        models: dict[str, Any] = {}
        for text in self.store.policies().values():
            models.update(_parsed_policy(text).models)
        return Verifier(ReferenceValues(self.store.references()), AppraisalPolicy(models))

    # -- challenges and evidence -------------------------------------------

    def challenge(self, device_id: str) -> bytes:
        """Issue a fresh single-use nonce to an active device.

        Raises:
            UnknownDeviceError: no such device, or it is not active.
        """
        if self.devices.get_device(device_id).status != "active":
            raise UnknownDeviceError(f"device {device_id!r} is not active")
        now = self.clock.now()
        self.store.purge_nonces(now)
        nonce = secrets.token_bytes(NONCE_BYTES)
        self.store.issue_nonce(device_id, nonce, now + self.nonce_ttl)
        return nonce

    def queue_challenge(self, device_id: str) -> bytes:
        """Issue a nonce and queue it for the device's ``cmd`` topic (sent by a hub connected to the broker).

        Raises:
            UnknownDeviceError: no such device, or it is not active.
        """
        nonce = self.challenge(device_id)
        payload = cbor2.dumps({"device_id": device_id, "nonce": nonce})
        self.outbox.enqueue([OutboxMessage(CHALLENGE_KIND, payload)], self.clock.now())
        return nonce

    def step_up(self, device_id: str) -> None:
        """A policy asked for fresh evidence from ``device_id``: queue a challenge, at most one per nonce lifetime.

        Called by the device plane when a policy annotated ``@step_up("attest")``
        denied the device; a device that is not active is left alone.
        """
        now = time.monotonic()
        with self._stepped_up_lock:
            if now - self._stepped_up.get(device_id, -math.inf) < self.nonce_ttl.total_seconds():
                return
            self._stepped_up[device_id] = now
        try:
            self.queue_challenge(device_id)
        except UnknownDeviceError:
            return
        log.info("step-up: attestation challenge queued for %s", device_id)

    def handle(self, request: VerifiedRequest) -> dict[str, Any]:
        """A verified ``attest`` device request: a nonce for empty evidence, else the appraisal."""
        body = request.body
        evidence = body["evidence"]
        if not evidence:
            if body["nonce"] or body["attestation_key"] or body["algorithm"]:
                raise MalformedError("a nonce request carries no nonce, key or algorithm")
            return {"nonce": self.challenge(request.device_id).hex(), "expires_in": int(self.nonce_ttl.total_seconds())}
        key = _attestation_key(body["algorithm"], body["attestation_key"])
        result = self.appraise(request.device_id, body["nonce"], evidence, key)
        return {"device_id": request.device_id, "status": result.status.value,
                "trust_tier": TRUST_TIER_OF[result.status], "reasons": list(result.reasons)}

    def appraise(self, device_id: str, nonce: bytes, evidence: bytes, key: AttestationKey) -> AttestationResult:
        """Appraise evidence answering ``nonce`` and apply the result to the device's posture.

        Raises:
            ReplayError: ``nonce`` was not issued to this device, was answered already, or expired.
            IntegrityError: (code ``attestation_key_mismatch``) the named key is not the device's bound key.
            AttestationError: no appraisal policy for the device's model (fail closed; posture unchanged).
        """
        now = self.clock.now()
        record = self.devices.get_device(device_id)
        if not self.store.nonce_pending(device_id, nonce, now):
            self._audit_refusal(device_id, "nonce_unknown")
            raise ReplayError("attestation nonce unknown, used or expired")
        try:
            bound = self._device_key(device_id, key, now)
            try:
                result = self.verifier().appraise(evidence, attestation_key=bound, expected_nonce=nonce,
                                                  model=record.model, now=now)
            except AttestationError:
                self._audit_refusal(device_id, "no_appraisal_policy")
                raise
        except IotGuardError:
            self.store.take_nonce(device_id, nonce, now)  # answered, if refused: single use either way
            raise
        stored = StoredAppraisal(device_id, now, result.status.value, result.reasons, result.firmware_version,
                                 result.keystore_kind)

        def conclude(tx: Any) -> None:
            # The nonce is consumed in the transaction that records the result and sets the posture: one
            # commit, and of two processes answering with one nonce only one commits.
            if not self.store.conclude(tx, device_id, nonce, now, stored):
                raise ReplayError("attestation nonce unknown, used or expired")

        tier = TRUST_TIER_OF[result.status]
        event = AuditEvent(EventType.ATTESTATION_RESULT, now, "hub.attestation", device_id,
                           {"status": result.status.value, "trust_tier": tier, "reasons": list(result.reasons),
                            "model": record.model, "firmware_version": result.firmware_version,
                            "keystore_kind": result.keystore_kind})
        try:
            self.posture.apply_attestation(device_id, tier, attested=result.affirming, audit=audit_message(event),
                                           within=conclude)
        except ReplayError:
            self._audit_refusal(device_id, "nonce_unknown")
            raise
        self.appraisals.add(result.status.value, "")
        if self.on_appraisal is not None:
            self.on_appraisal(device_id, result.status.value, result.reasons, now)
        if not result.affirming:
            log.warning("attestation of %s: %s (%s)", device_id, result.status.value, ",".join(result.reasons))
        return result

    def _device_key(self, device_id: str, key: AttestationKey, now: datetime) -> AttestationKey:
        """The device's attestation key, if ``key`` is it.

        A device with a recorded endorsement key, and any TPM (ES256) key,
        must have been certified by credential activation
        (:mod:`~iotguard.hub.services.ak_certification`); a software root's
        EdDSA key is bound on first use to the enrolled identity (ADR 0801).

        Raises:
            IntegrityError: ``attestation_key_not_certified`` or ``attestation_key_mismatch``.
        """
        endorsement = self.store.endorsement(device_id)
        if endorsement is not None or key.algorithm is not AttestationKeyAlgorithm.EDDSA:
            certified = None if endorsement is None else endorsement.certified_key
            if certified is None:
                self._audit_refusal(device_id, "attestation_key_not_certified")
                raise IntegrityError("the device's TPM attestation key has not been certified against its EK",
                                     code="attestation_key_not_certified")
            bound = certified
        else:
            bound = self.store.bind_key(device_id, key, now)
        if bound != key:
            self._audit_refusal(device_id, "attestation_key_mismatch")
            raise IntegrityError("evidence names another attestation key than the device's",
                                 code="attestation_key_mismatch")
        return bound

    def history(self, device_id: str, limit: int = 20) -> list[StoredAppraisal]:
        """The device's latest appraisals, newest first."""
        return self.store.history(device_id, limit)

    def _audit_refusal(self, device_id: str, reason: str) -> None:
        self.appraisals.add("refused", reason)
        now = self.clock.now()
        event = AuditEvent(EventType.ATTESTATION_RESULT, now, "hub.attestation", device_id,
                           {"status": "refused", "reasons": [reason]})
        self.outbox.enqueue([audit_message(event)], now)


class ChallengePush(DeviceCommandPush):
    """Outbox handler sending queued challenges as authenticated commands; claims rows only while connected.

    A lost challenge expires; the operator or the schedule asks again.
    """

    def __init__(self, lifecycle: DeviceLifecycle, channel: CommandChannel) -> None:
        super().__init__(lifecycle, channel, kind=CHALLENGE_KIND, command="attest-challenge", argument="nonce")
