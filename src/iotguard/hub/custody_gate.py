"""Enrollment's custody check: a device enrolls only with a complete, verified chain of custody.

:class:`CustodyGate` reads the device's logged custody statements from the
audit log and verifies the chain with
:func:`~iotguard.audit.custody.verify_custody_chain` against the parties the
operator trusts (a JSON file, ``hub.custody_parties_file``). The registry
calls :meth:`CustodyGate.check` once, after proof of possession and before
issuing a certificate, when ``hub.custody_required`` is on.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence

from iotguard.audit.custody import (
    DEFAULT_CUSTODY_CHAIN,
    CustodyRole,
    CustodyStatement,
    Party,
    custody_event,
    open_custody_statement,
    statements_from_events,
    verify_custody_chain,
)
from iotguard.audit.events import AuditEvent
from iotguard.audit.log import TransparencyLog
from iotguard.config import HubConfig
from iotguard.errors import ConfigError

__all__ = ["CustodyGate", "custody_gate_from_config", "load_custody_parties"]

#: Largest parties file accepted.
MAX_PARTIES_BYTES = 256 * 1024


def load_custody_parties(path: str | os.PathLike[str]) -> dict[str, Party]:
    """Read trusted parties: ``[{"name", "role", "public_key": base64 Ed25519}]``.

    Raises:
        ConfigError: unreadable, too large or malformed.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PARTIES_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"custody parties file unreadable: {exc.strerror}") from None
    if len(data) > MAX_PARTIES_BYTES:
        raise ConfigError("custody parties file is too large")
    try:
        raw = json.loads(data)
        parties: dict[str, Party] = {}
        for item in raw:
            key = base64.b64decode(item["public_key"], validate=True)
            if len(key) != 32 or not isinstance(item["name"], str) or item["name"] in parties:
                raise ValueError
            parties[item["name"]] = Party(item["name"], CustodyRole(item["role"]), key)
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise ConfigError("custody parties file must list name, role and base64 Ed25519 public_key") from None
    return parties


class CustodyGate:
    """Verifies a device's logged chain of custody.

    Args:
        log: The audit log the statements were recorded in.
        trust: Trusted parties by name.
        required: Roles that must sign, in order.
    """

    def __init__(
        self,
        log: TransparencyLog,
        trust: Mapping[str, Party],
        required: Sequence[CustodyRole] = DEFAULT_CUSTODY_CHAIN,
    ) -> None:
        self._log = log
        self._trust = dict(trust)
        self._required = tuple(required)

    def record(self, message: bytes) -> CustodyStatement:
        """Verify one party's signed statement and log it.

        Raises:
            CustodyError: the statement is not signed by a trusted party.
            MalformedError: it is malformed.
        """
        statement = open_custody_statement(message, self._trust)
        self._log.append([custody_event(message, statement)])
        return statement

    def check(self, device_id: str, identity_public_key: bytes) -> list[CustodyStatement]:
        """Refuse unless the device's logged chain is complete and verifies.

        Raises:
            CustodyError: incomplete, forged, diverted or broken chain.
        """
        events = [AuditEvent.from_cbor(e) for i in self._log.find_subject(device_id)
                  for e in self._log.entries(i, i + 1)]
        return verify_custody_chain(
            statements_from_events(events), device_id, identity_public_key, self._trust, self._required
        )


def custody_gate_from_config(hub: HubConfig, log: TransparencyLog) -> CustodyGate | None:
    """The gate enrollment uses, or ``None`` when ``hub.custody_required`` is off.

    Raises:
        ConfigError: custody is required but no parties file is configured.
    """
    if not hub.custody_required:
        return None
    if not hub.custody_parties_file:
        raise ConfigError("hub.custody_required needs hub.custody_parties_file")
    return CustodyGate(log, load_custody_parties(hub.custody_parties_file))
