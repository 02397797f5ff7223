"""Side effects through the outbox: the CLI, the API and every hub process behave the same."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography import x509
from fastapi.testclient import TestClient

from iotguard.agent import Agent
from iotguard.audit import AuditEvent
from iotguard.cli.main import main
from iotguard.config import AgentConfig, HubConfig
from iotguard.hub.api import create_app
from iotguard.hub.compose import HubServices, Maintenance, build_hub_services
from iotguard.hub.services.audit import AUDIT_KIND


def _events(services: HubServices) -> list[AuditEvent]:
    log = services.audit.log
    return [AuditEvent.from_cbor(e) for e in log.entries(0, log.size())]


def _config(tmp_path: Path) -> tuple[Path, HubConfig]:
    broker = tmp_path / "broker"
    broker.mkdir()
    data = tmp_path / "hub"
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{data}"\nmosquitto_dir = "{broker}"\n')
    return conf, HubConfig(data_dir=str(data), mosquitto_dir=str(broker))


def _revoked_serials(broker: Path) -> set[int]:
    crl = x509.load_pem_x509_crl((broker / "crl.pem").read_bytes())
    return {r.serial_number for r in crl}


def _enroll(services: HubServices, tmp_path: Path, device_id: str, code: str) -> int:
    client = TestClient(create_app(services, drain=services.drainer().drain))
    agent = Agent(AgentConfig(data_dir=str(tmp_path / device_id), hub_url="http://testserver",
                              suites=["chacha20-poly1305"]), device_id, http=client)
    agent.enroll(code)
    return int(services.store.get_device(device_id).cert_serial or "0", 16)


def test_cli_add_records_device_registered(tmp_path: Path) -> None:
    """``iotguard devices add`` leaves a ``device.registered`` entry in the audit log."""
    conf, cfg = _config(tmp_path)
    assert main(["devices", "--config", str(conf), "add", "dev-1", "--model", "thermo-1"]) == 0
    events = [e for e in _events(build_hub_services(cfg)) if e.subject == "dev-1"]
    assert [e.type for e in events] == ["device.registered"]
    assert events[0].actor == "cli" and "outbox_id" in events[0].details


def test_cli_revocation_reaches_the_broker_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A revocation made with the CLI rewrites the Mosquitto CRL and ACL, without any hub running."""
    conf, cfg = _config(tmp_path)
    assert main(["devices", "--config", str(conf), "add", "dev-1", "--model", "thermo-1"]) == 0
    code = capsys.readouterr().out.strip().splitlines()[-1]
    hub = build_hub_services(cfg)
    serial = _enroll(hub, tmp_path, "dev-1", code)
    assert serial not in _revoked_serials(tmp_path / "broker")  # enrollment wrote the files too
    assert "dev-1" in (tmp_path / "broker" / "acl").read_text()
    hub.store.engine.dispose()
    assert main(["devices", "--config", str(conf), "revoke", "dev-1", "--reason", "stolen"]) == 0
    assert serial in _revoked_serials(tmp_path / "broker")
    assert "dev-1" not in (tmp_path / "broker" / "acl").read_text()
    assert "cert.revoked" in [e.type for e in _events(build_hub_services(cfg)) if e.subject == "dev-1"]


def test_change_committed_by_a_process_that_died_is_delivered_by_a_running_hub(tmp_path: Path) -> None:
    """The CLI committed a revocation and crashed before delivering it: the hub's next tick delivers it, once."""
    _conf, cfg = _config(tmp_path)
    hub = build_hub_services(cfg)
    code = hub.lifecycle.add_device("dev-1", "thermo-1")
    serial = _enroll(hub, tmp_path, "dev-1", str(code))
    cli = build_hub_services(cfg)
    cli.lifecycle.revoke("dev-1", actor="cli", reason="lost")  # committed; never drained
    assert serial not in _revoked_serials(tmp_path / "broker")
    maintenance = Maintenance(hub, worker="hub-a")
    maintenance.tick()
    assert serial in _revoked_serials(tmp_path / "broker")
    maintenance.tick()
    revoked = [e for e in _events(hub) if e.type == "cert.revoked"]
    assert len(revoked) == 1
    assert hub.outbox.pending() == 0


def test_redelivered_audit_event_is_appended_once(tmp_path: Path) -> None:
    """Two processes deliver the same audit row (a lease expired mid-delivery): one entry in the log."""
    from datetime import timedelta

    _conf, cfg = _config(tmp_path)
    hub = build_hub_services(cfg)
    hub.lifecycle.add_device("dev-1", "thermo-1")
    rows = hub.outbox.claim([AUDIT_KIND], "slow", hub.clock.now(), limit=10, lease=timedelta(seconds=60))
    assert rows
    delivery = hub.audit.delivery()
    delivered: list[bool] = []

    def confirm(conn: object) -> bool:
        delivered.append(hub.outbox.confirm([r.id for r in rows], hub.clock.now(), conn=conn))
        return delivered[-1]

    delivery.deliver(rows, confirm)  # the first deliverer
    delivery.deliver(rows, confirm)  # the one whose lease had expired, late
    assert delivered == [True, False]
    assert [e.type for e in _events(hub) if e.subject == "dev-1"] == ["device.registered"]


def test_two_hubs_draining_on_postgres_append_each_audit_event_once(tmp_path: Path, postgres_url: str) -> None:
    """N hub processes on one PostgreSQL: every queued audit event appears exactly once."""
    cfg = HubConfig(data_dir=str(tmp_path / "hub"))
    a = build_hub_services(cfg, database_url=postgres_url)
    b = build_hub_services(cfg, database_url=postgres_url)
    for i in range(40):
        a.lifecycle.add_device(f"dev-{i}", "thermo-1")
    drainers = [a.drainer("hub-a"), b.drainer("hub-b")]
    for d in drainers:
        d.batch = 3
    threads = [threading.Thread(target=d.drain) for d in drainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registered = [e.subject for e in _events(a) if e.type == "device.registered"]
    assert sorted(registered) == sorted(f"dev-{i}" for i in range(40))
    assert a.outbox.pending() == 0


def test_cli_consent_withdrawal_is_pushed_by_a_connected_hub(tmp_path: Path) -> None:
    """The CLI records a withdrawal; only a hub with a broker connection claims the push, and sends it."""
    from iotguard.hub.services.consent import CONSENT_PUSH_KIND

    conf, cfg = _config(tmp_path)
    hub = build_hub_services(cfg)
    code = hub.lifecycle.add_device("dev-1", "thermo-1")
    _enroll(hub, tmp_path, "dev-1", str(code))
    hub.consent.record_initial_consent("alice", "dev-1", {"research": True})
    assert main(["privacy", "consent", "withdraw", "--config", str(conf), "--subject", "alice",
                 "--purpose", "research"]) == 0
    assert hub.outbox.pending([CONSENT_PUSH_KIND]) == 1
    disconnected = Maintenance(hub, worker="hub-without-broker")
    disconnected.tick()
    assert hub.outbox.pending([CONSENT_PUSH_KIND]) == 1  # not claimed without a broker connection
    sent: list[tuple[str, bytes]] = []
    hub.commands.attach(lambda topic, payload: sent.append((topic, payload)))
    Maintenance(hub, worker="hub-with-broker").tick()
    assert [t for t, _p in sent] == ["iotguard/default/dev-1/cmd"]
    assert hub.outbox.pending() == 0
    assert "consent.changed" in [e.type for e in _events(hub)]


def test_cli_policy_activation_is_audited(tmp_path: Path) -> None:
    """``iotguard policy activate`` leaves the new version and its activation in the audit log."""
    from iotguard.audit import TransparencyLog
    from iotguard.hub.audit_store import SqlLogStore
    from iotguard.hub.db import make_engine
    from iotguard.policy import default_policy_set

    db = f"sqlite:///{tmp_path / 'hub.db'}"
    policies = tmp_path / "v1.cedar"
    policies.write_text(default_policy_set().text)
    assert main(["policy", "--database-url", db, "activate", str(policies), "--actor", "sam"]) == 0
    log = TransparencyLog(SqlLogStore(make_engine(db)))
    events = [AuditEvent.from_cbor(e) for e in log.entries(0, log.size())]
    assert [e.type for e in events] == ["policy.version_added", "policy.changed"]
    assert events[1].actor == "sam"
