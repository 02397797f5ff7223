"""Services on in-memory stores: a change and its side effects are one unit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest

from iotguard.audit import AuditEvent
from iotguard.clock import FixedClock
from iotguard.config import HubConfig
from iotguard.errors import UnknownDeviceError
from iotguard.hub.outbox import MemoryOutboxStore
from iotguard.hub.services.audit import AUDIT_KIND
from iotguard.hub.services.broker_access import BROKER_ACCESS_KIND
from iotguard.hub.services.lifecycle import DeviceLifecycle
from iotguard.hub.stores.devices_memory import MemoryDeviceStore
from iotguard.keys import SoftwareKeyStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _lifecycle(tmp_path: Path, **cfg: object) -> tuple[DeviceLifecycle, MemoryOutboxStore]:
    outbox = MemoryOutboxStore()
    store = MemoryDeviceStore(outbox)
    keys = SoftwareKeyStore(tmp_path / "keys", device_binding=b"services-test-binding")
    hub_cfg = HubConfig(data_dir=str(tmp_path / "hub"), **cfg)  # type: ignore[arg-type]
    return DeviceLifecycle(store, keys, hub_cfg, FixedClock(T0), outbox=outbox), outbox


def _effects(outbox: MemoryOutboxStore) -> list[tuple[str, str]]:
    out = []
    for row in outbox.claim([AUDIT_KIND, BROKER_ACCESS_KIND], "test", T0, limit=100):
        if row.kind == AUDIT_KIND:
            out.append((row.kind, AuditEvent.from_cbor(row.payload).type))
        else:
            out.append((row.kind, cbor2.loads(row.payload)["reason"]))
    return out


def test_registration_queues_its_audit_event(tmp_path: Path) -> None:
    lifecycle, outbox = _lifecycle(tmp_path)
    lifecycle.add_device("dev-1", "thermo-1", actor="alice")
    assert _effects(outbox) == [(AUDIT_KIND, "device.registered")]


def test_revocation_queues_audit_and_broker_access_when_the_hub_manages_mosquitto(tmp_path: Path) -> None:
    lifecycle, outbox = _lifecycle(tmp_path, mosquitto_dir=str(tmp_path / "broker"))
    lifecycle.add_device("dev-1", "thermo-1")
    _effects(outbox)
    lifecycle.revoke("dev-1", actor="alice", reason="stolen")
    assert _effects(outbox) == [(AUDIT_KIND, "cert.revoked"), (BROKER_ACCESS_KIND, "revoked")]


def test_failed_change_queues_nothing(tmp_path: Path) -> None:
    lifecycle, outbox = _lifecycle(tmp_path, mosquitto_dir=str(tmp_path / "broker"))
    with pytest.raises(UnknownDeviceError):
        lifecycle.revoke("ghost", actor="alice")
    assert outbox.pending() == 0
