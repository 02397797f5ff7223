"""Broker access: the Mosquitto CRL and ACL follow the registry and the policy.

A revocation, re-provisioning, decommissioning, enrollment, quarantine or
release writes a :func:`broker_access_message` row in its transaction.
:class:`BrokerAccess` delivers such rows by rewriting the CRL and ACL from
the database (idempotent: a redelivery rewrites the same files) and sending
SIGHUP to Mosquitto. Rows queued together are delivered by one rewrite.
Rows that only change devices' posture (:data:`POSTURE_REASONS`: quarantine,
release, tamper, risk, attestation results) rewrite only the ACL, with only those
devices' grants derived again; anything else re-issues the CRL and derives
the whole ACL. The CLI delivers them too, so ``iotguard devices revoke`` reaches
the broker without a running hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import cbor2

from iotguard.clock import Clock
from iotguard.hub.mosquitto import reload, update_access_files, update_acl_file
from iotguard.hub.outbox import OutboxMessage, OutboxRow
from iotguard.hub.store import HubStore
from iotguard.identity import FleetCA

__all__ = ["BROKER_ACCESS_KIND", "POSTURE_REASONS", "BrokerAccess", "EmbeddedBrokerLink", "broker_access_message"]

log = logging.getLogger(__name__)

#: Outbox kind of a broker access rewrite.
BROKER_ACCESS_KIND = "broker.access"
#: Reasons that change one device's posture only (no certificate revoked, no device added or removed).
POSTURE_REASONS = frozenset({"quarantined", "released", "tampered", "risk"})


def broker_access_message(device_id: str, reason: str) -> OutboxMessage:
    """The outbox row asking for a CRL/ACL rewrite after ``device_id``'s access changed."""
    return OutboxMessage(BROKER_ACCESS_KIND, cbor2.dumps({"device_id": device_id, "reason": reason}))


class BrokerAccess:
    """Rewrites the broker's CRL and ACL and reloads Mosquitto (an outbox handler).

    Args:
        mosquitto_dir: The broker directory written by ``iotguard broker config``.
        pid_file: Mosquitto's pid file ("" when the broker is reloaded otherwise).
        ca: The fleet CA (signs the CRL inside the hub key store).
        store: The device registry.
        acl_renderer: The ACL derived from the active Cedar policies and posture; called with
            ``changed=`` device ids after posture-only changes.
        clock: Time source.
    """

    kinds: tuple[str, ...] = (BROKER_ACCESS_KIND,)

    def __init__(self, mosquitto_dir: str, pid_file: str, ca: FleetCA, store: HubStore,
                 acl_renderer: Callable[..., str], clock: Clock) -> None:
        self.mosquitto_dir = mosquitto_dir
        self.pid_file = pid_file
        self.ca = ca
        self.store = store
        self.acl_renderer = acl_renderer
        self.clock = clock

    def rewrite(self) -> None:
        """Rewrite the CRL and ACL now and signal the broker."""
        update_access_files(self.mosquitto_dir, self.ca, self.store, self.clock.now(),
                            acl_renderer=self.acl_renderer)
        if self.pid_file:
            reload(self.pid_file)

    def deliver(self, rows: Sequence[OutboxRow], confirm: Callable[[Any], bool]) -> None:
        changes = [_change(row) for row in rows]
        if all(reason in POSTURE_REASONS or reason.startswith("attestation_") for _, reason in changes) and \
                all(device for device, _ in changes):
            update_acl_file(self.mosquitto_dir, self.acl_renderer(changed={d for d, _ in changes}))
            if self.pid_file:
                reload(self.pid_file)
            log.info("broker ACL updated for %d posture change(s)", len(rows))
        else:
            self.rewrite()
            log.info("broker access rewritten for %d change(s)", len(rows))
        confirm(None)


def _change(row: OutboxRow) -> tuple[str, str]:
    """(device id, reason) of a broker access row; an unreadable row counts as a full rewrite."""
    try:
        body = cbor2.loads(row.payload)
        return str(body["device_id"]), str(body["reason"])
    except (cbor2.CBORDecodeError, ValueError, TypeError, KeyError):
        return "", "unknown"


class EmbeddedBrokerLink:
    """This process's embedded broker, once started: its access (CRL, ACL) follows each change at once.

    The embedded broker lives in one hub process and reads the registry and
    the posture itself; the lifecycle and posture services tell it when they
    changed something, before the request returns. Until a broker is
    attached (the CLI, other processes) this does nothing: that hub's upkeep
    notices changes made elsewhere through the posture it refreshes.
    """

    def __init__(self) -> None:
        self._refresh: Callable[[], None] | None = None

    def attach(self, refresh: Callable[[], None]) -> None:
        """Connect the running embedded broker's access refresh."""
        self._refresh = refresh

    def changed(self) -> None:
        """Refresh now; a failure is logged and left to the broker's upkeep, never failing the committed change."""
        refresh = self._refresh
        if refresh is None:
            return
        try:
            refresh()
        except Exception as exc:  # the change is committed; the upkeep thread retries within a second
            log.error("embedded broker access refresh failed (%s); the upkeep retries", type(exc).__name__)
