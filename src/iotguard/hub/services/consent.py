"""Consent and privacy: data subjects, consent, pushes to devices, receipts, erasure, retention.

A consent change and the row that pushes the new configuration to the
subject's devices are written in one transaction. Only a hub process with a
broker connection (an attached :class:`CommandChannel`) claims push rows; the
CLI and a hub that is not connected yet leave them for one that is.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import cbor2

from iotguard.channel import command_topic, encode_command
from iotguard.clock import Clock
from iotguard.errors import AuthenticationError, IotGuardError, MalformedError
from iotguard.hub.event_counts import EventCounts
from iotguard.hub.outbox import OutboxMessage, OutboxRow
from iotguard.hub.privacy_store import ErasureRecord, PrivacyStore, RetentionReport, enforce_retention
from iotguard.hub.services.lifecycle import DeviceLifecycle
from iotguard.hub.services.posture import contract_for
from iotguard.hub.store import HubStore
from iotguard.identity import VerifiedRequest
from iotguard.privacy import ConsentAck, ConsentState, load_contract

__all__ = ["CONSENT_PUSH_KIND", "CommandChannel", "ConsentPush", "ConsentService", "consent_push_message"]

log = logging.getLogger(__name__)

#: Outbox kind of a consent push.
CONSENT_PUSH_KIND = "consent.push"
#: An unacknowledged consent configuration is pushed again after this long.
REPUSH_AFTER = timedelta(seconds=5)


def consent_push_message(subject_id: str) -> OutboxMessage:
    """The outbox row that pushes ``subject_id``'s current consent to their devices."""
    return OutboxMessage(CONSENT_PUSH_KIND, cbor2.dumps({"subject_id": subject_id}))


class CommandChannel:
    """The hub's authenticated command path to devices (MQTT), once connected."""

    def __init__(self) -> None:
        self._publish: Callable[[str, bytes], None] | None = None
        self._lock = threading.Lock()

    def attach(self, publish: Callable[[str, bytes], None]) -> None:
        """Connect the channel to the broker client's publish function."""
        with self._lock:
            self._publish = publish

    @property
    def connected(self) -> bool:
        return self._publish is not None

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish a command.

        Raises:
            IotGuardError: not connected.
        """
        publish = self._publish
        if publish is None:
            raise IotGuardError("no broker connection")
        publish(topic, payload)


class ConsentService:
    """Data subjects, consent and its delivery to devices, receipts, erasure, retention.

    Args:
        privacy: The privacy tables.
        store: The device registry (read only).
        lifecycle: Session keys for authenticated commands.
        channel: The command path to devices.
        clock: Time source.
    """

    def __init__(self, privacy: PrivacyStore, store: HubStore, lifecycle: DeviceLifecycle, channel: CommandChannel,
                 clock: Clock) -> None:
        self.privacy = privacy
        self.store = store
        self.lifecycle = lifecycle
        self.channel = channel
        self.clock = clock
        self._all_sealed = False
        #: Called after an erasure with the subject's devices (``LearningService.unlearn``).
        self.erasure_hooks: list[Callable[[Sequence[str], str], list[dict[str, Any]]]] = []
        #: Consent changes and erasures by this process: (event,) -> count (``/metrics``).
        self.events = EventCounts()

    # -- subjects and consent --------------------------------------------

    def link(self, subject_id: str, device_id: str) -> None:
        """Record which data subject a device's readings are about.

        Raises:
            UnknownDeviceError: no such device.
        """
        self.store.get_device(device_id)
        self.privacy.link_device(subject_id, device_id, self.clock.now())

    def record_initial_consent(self, subject_id: str, device_id: str, decisions: Mapping[str, bool]) -> None:
        """Link a device to its data subject and record the subject's decisions (no push: the device has them)."""
        now = self.clock.now()
        self.privacy.link_device(subject_id, device_id, now)
        for purpose, granted in decisions.items():
            self.privacy.set_consent(subject_id, purpose, granted, now, actor="owner")

    def change(self, subject_id: str, purpose: str, granted: bool, *, actor: str) -> ConsentState:
        """Grant or withdraw consent; the new configuration is pushed to the subject's devices."""
        state = self.privacy.set_consent(subject_id, purpose, granted, self.clock.now(), actor=actor,
                                         effects=[consent_push_message(subject_id)])
        self.events.add("consent_granted" if granted else "consent_withdrawn")
        return state

    def push(self, subject_id: str) -> int:
        """Send the subject's current consent to each of their devices (authenticated command); returns how many.

        Raises:
            IotGuardError: no broker connection.
        """
        if not self.channel.connected:
            raise IotGuardError("no broker connection")
        sent = 0
        for config in self.privacy.consent_configs(subject_id, self.clock.now()):
            try:
                record = self.store.get_device(config.device_id)
                if record.current_epoch is None:
                    continue
                _r, _s, keys = self.lifecycle.session(record.device_id, record.current_epoch)
            except IotGuardError as exc:
                log.warning("consent not pushed to %s: %s", config.device_id, exc.code)
                continue
            self.channel.publish(command_topic(record.segment, record.device_id),
                                 encode_command(record.device_id, "consent-config", config.encode(), keys.downlink))
            sent += 1
        return sent

    def repush_unacknowledged(self) -> None:
        """Push again consent configurations a device has not acknowledged within
        :data:`REPUSH_AFTER` (it was offline at the time)."""
        if not self.channel.connected:
            return
        due = self.privacy.unacknowledged_consent(pushed_before=self.clock.now() - REPUSH_AFTER)
        subjects = {s for s in (self.privacy.subject_of(d) for d, _v in due) if s}
        for subject in sorted(subjects):
            self.push(subject)

    def acknowledge(self, request: VerifiedRequest) -> ConsentAck:
        """A device confirms it applied a pushed consent configuration (a signed device request,
        already verified and authorized by the device plane).

        Raises:
            MalformedError, ConsentError.
        """
        ack = ConsentAck.decode(bytes(request.body["ack"]))
        if ack.device_id != request.device_id:
            raise MalformedError("acknowledgement is for another device")
        self.privacy.record_consent_ack(ack, self.clock.now())
        return ack

    # -- receipts, access, erasure, retention ------------------------------

    def store_receipt(self, request: VerifiedRequest) -> dict[str, Any]:
        """A device's privacy receipt, carried in a signed device request: verified against its identity key
        and the device model's contract, and stored.

        Raises:
            AuthenticationError, IntegrityError, MalformedError, BudgetExhausted.
        """
        device = self.store.get_device(request.device_id)
        if device.identity_public_key is None:
            raise AuthenticationError("device has no identity key")
        return self.privacy.store_receipt(device.device_id, bytes(request.body["receipt"]),
                                          device.identity_public_key, self.clock.now(),
                                          contract=load_contract(device.model))

    def export(self, subject_id: str) -> dict[str, Any]:
        """Everything held about a data subject (access request)."""
        return self.privacy.export_subject(subject_id, self.clock.now())

    def erase(self, subject_id: str, *, actor: str) -> ErasureRecord:
        """Erase everything held about a data subject (crypto-shredding their key), then run the erasure hooks
        (models retrained without the subject's devices; what they report goes into the record's ``models``)."""
        record = self.privacy.erase_subject(subject_id, self.clock.now(), actor=actor)
        self.events.add("erasure")
        models = [m for hook in self.erasure_hooks for m in hook(record.devices, actor)]
        return dataclasses.replace(record, models=tuple(models)) if models else record

    def seal_clear_readings(self) -> int:
        """Encrypt one chunk of readings (and receipts) stored clear before migration 0311; returns how many
        (0 once none is left; this process then stops looking)."""
        if self._all_sealed:
            return 0
        sealed = self.store.seal_clear_readings(self.clock.now())
        sealed += self.privacy.seal_clear_receipts(self.clock.now())
        self._all_sealed = sealed == 0
        if sealed:
            log.info("sealed %d readings stored clear before migration 0311", sealed)
        return sealed

    def enforce_retention(self) -> RetentionReport:
        """Delete readings past their purpose's retention (logged)."""
        report = enforce_retention(self.store.engine, self.clock.now(), contracts=contract_for,
                                   audit=self.privacy.audit, telemetry=self.privacy.telemetry)
        if report.total:
            log.info("retention deleted %d readings", report.total)
        return report


class ConsentPush:
    """Outbox handler pushing consent configurations; claims rows only while the channel is connected."""

    def __init__(self, consent: ConsentService) -> None:
        self.consent = consent

    @property
    def kinds(self) -> tuple[str, ...]:
        return (CONSENT_PUSH_KIND,) if self.consent.channel.connected else ()

    def deliver(self, rows: Sequence[OutboxRow], confirm: Callable[[Any], bool]) -> None:
        subjects: list[str] = []
        for r in rows:
            try:
                subject = cbor2.loads(r.payload)["subject_id"]
            except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError):
                continue
            if isinstance(subject, str) and subject not in subjects:
                subjects.append(subject)
        for subject in subjects:
            self.consent.push(subject)  # re-sending a configuration is harmless: the device acks its version
        confirm(None)
