"""Detection wired into the hub: alerts stored and audited, the playbook's response executed with guard rails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from iotguard.audit.provenance import provenance, verify_chain_of_custody
from iotguard.detection import Alert, Severity, parse_playbook
from iotguard.detection.response import plan
from iotguard.errors import PolicyDenied, UnknownAlertError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.outbox import OutboxMessage
from iotguard.hub.stores.alerts import AlertStore, MemoryAlertStore, SqlAlertStore, StoredAction
from iotguard.policy import AccessRequest
from tests.hub.conftest import HubParts
from tests.hub.test_stores import T0

T1 = 1_767_225_600.0  # 2026-01-01 in POSIX seconds


def _scan(device: str, at: float = T1, detector: str = "scan_fanout") -> Alert:
    return Alert.create(device, detector, 42.0, Severity.HIGH, (at, at + 15.0),
                        {"address": "10.0.0.9", "new_destinations": 42})


# -- store contract ------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def alerts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AlertStore]:
    if request.param == "memory":
        yield MemoryAlertStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlAlertStore(engine)
    engine.dispose()


def test_alert_store_keeps_each_alert_once_and_acks_idempotently(alerts: AlertStore) -> None:
    a, b = _scan("dev-1"), _scan("dev-2", detector="beaconing")
    effect = [OutboxMessage("audit.event", b"x")]
    assert alerts.add_alert(a, T0, effects=effect) is True
    assert alerts.add_alert(a, T0, effects=effect) is False  # a re-sent alert is not a second alert
    assert alerts.add_alert(b, T0) is True
    assert alerts.get(a.alert_id).alert == a
    assert {s.alert_id for s in alerts.alerts()} == {a.alert_id, b.alert_id}
    assert [s.alert_id for s in alerts.alerts(device_id="dev-2")] == [b.alert_id]
    assert alerts.counts() == {("scan_fanout", 3): 1, ("beaconing", 3): 1}
    first = alerts.ack(a.alert_id, "olga", T0)
    again = alerts.ack(a.alert_id, "mallory", T0)
    assert first.acked_by == again.acked_by == "olga"
    assert [s.alert_id for s in alerts.alerts(unacked=True)] == [b.alert_id]
    with pytest.raises(UnknownAlertError):
        alerts.get("0" * 64)
    with pytest.raises(UnknownAlertError):
        alerts.ack("0" * 64, "olga", T0)


def test_alert_store_records_actions_in_order(alerts: AlertStore) -> None:
    a = _scan("dev-1")
    alerts.add_alert(a, T0)
    first = alerts.add_action(StoredAction(0, a.alert_id, "dev-1", "quarantine", "execute", "rule", "compromise",
                                           "default-response@1", "done", T0))
    second = alerts.add_action(StoredAction(0, a.alert_id, "dev-1", "revoke", "await_approval",
                                            "approval_required", "compromise", "default-response@1",
                                            "awaiting_approval", T0))
    assert second.id > first.id > 0
    assert [x.kind for x in alerts.actions(alert_id=a.alert_id)] == ["quarantine", "revoke"]
    assert alerts.actions(device_id="dev-2") == []


def test_alert_store_batches_are_one_transaction_and_skip_stored_alerts(alerts: AlertStore) -> None:
    a, b, c = _scan("dev-1"), _scan("dev-2"), _scan("dev-3")
    assert alerts.add_alert(a, T0)
    fresh = alerts.add_alerts([(a, [OutboxMessage("audit.event", b"a")]), (b, [OutboxMessage("audit.event", b"b")]),
                               (b, []), (c, [])], T0)
    assert fresh == [b, c]  # a was stored before, b is not stored twice within the batch
    assert {s.alert_id for s in alerts.alerts()} == {a.alert_id, b.alert_id, c.alert_id}
    rows = [StoredAction(0, b.alert_id, "dev-2", kind, "execute", "rule", "compromise", "default-response@2",
                         "done", T0) for kind in ("quarantine", "reattest", "notify")]
    stored = alerts.add_actions([(r, [OutboxMessage("audit.event", r.kind.encode())]) for r in rows])
    assert [x.kind for x in stored] == ["quarantine", "reattest", "notify"]
    assert stored[0].id < stored[1].id < stored[2].id
    assert alerts.actions(alert_id=b.alert_id) == stored


def test_alert_store_reads_only_the_actions_the_planner_needs(alerts: AlertStore) -> None:
    a = _scan("dev-1")
    alerts.add_alert(a, T0)

    def act(kind: str, outcome: str, minutes: int) -> StoredAction:
        return StoredAction(0, a.alert_id, "dev-1", kind, "execute", "rule", "r", "p@1", outcome,
                            T0 + timedelta(minutes=minutes))

    alerts.add_actions([(act("quarantine", "done", 0), []), (act("reattest", "done", 1), []),
                        (act("notify", "failed:notify_failed", 50), []), (act("reattest", "done", 50), []),
                        (act("release", "done", 55), [])])
    got = alerts.done_actions(T0 + timedelta(minutes=40), ["quarantine", "release"])
    assert [(x.kind, x.at) for x in got] == [("quarantine", T0), ("reattest", T0 + timedelta(minutes=50)),
                                             ("release", T0 + timedelta(minutes=55))]


# -- the hub ---------------------------------------------------------------------


def _fleet(hub: HubParts, n: int) -> list[str]:
    ids = [f"dev-{i}" for i in range(n)]
    for d in ids:
        hub.agent(d)
    return ids


def _may_publish(hub: HubParts, device: str) -> bool:
    try:
        hub.services.posture.engine.authorize(AccessRequest.device(device, "publish",
                                                                   f"iotguard/default/{device}/telemetry"))
    except PolicyDenied:
        return False
    return True


def test_scanner_alert_quarantines_by_playbook_and_audits_every_step(hub: HubParts) -> None:
    ids = _fleet(hub, 3)
    assert all(_may_publish(hub, d) for d in ids)
    alert = _scan("dev-0")
    actions = hub.services.detection.raise_alerts([alert])
    outcome = {a.kind: (a.status, a.outcome) for a in actions}
    assert outcome == {"quarantine": ("execute", "done"), "reattest": ("execute", "done"),
                       "revoke": ("await_approval", "awaiting_approval")}
    assert not _may_publish(hub, "dev-0")
    assert _may_publish(hub, "dev-1") and _may_publish(hub, "dev-2")  # the others keep flowing
    assert hub.services.detection.raise_alerts([alert]) == []  # re-sent: no second response
    hub.deliver()
    log = hub.services.audit.log
    chain = provenance(log, "dev-0")
    verify_chain_of_custody(chain, log.verifier)  # every entry's inclusion proof against the signed checkpoint
    linked = [(link.event.type, link.event.details.get("action")) for link in chain.links
              if link.event.details.get("alert_id") == alert.alert_id]
    assert ("detection.alert", None) in linked
    assert {a for t, a in linked if t == "detection.action"} == {"quarantine", "reattest", "revoke"}
    assert any(link.event.type == "device.quarantined" for link in chain.links)


def test_containment_is_delivered_before_the_response_is_recorded(hub: HubParts) -> None:
    """The outbox (broker ACL) is delivered as soon as the quarantine commits (the wake-up), not after the
    bookkeeping: at that moment no action is recorded yet; afterwards all of them are, with the risk score."""
    _fleet(hub, 3)
    hub.deliver()
    seen: list[tuple[bool, int, int]] = []
    detection = hub.services.detection

    def wake() -> None:
        hub.deliver()
        seen.append((_may_publish(hub, "dev-0"), len(detection.store.actions()),
                     hub.services.posture.posture.require("dev-0").risk_score))

    detection.after_containment = wake
    alert = _scan("dev-0")
    actions = detection.raise_alerts([alert])
    assert seen == [(False, 0, 0)]
    assert len(detection.store.actions()) == len(actions) == 3
    assert hub.services.posture.posture.require("dev-0").risk_score == 45


def test_planner_state_read_within_the_cooldown_plans_as_the_whole_history_does(hub: HubParts) -> None:
    _fleet(hub, 4)
    detection = hub.services.detection
    detection.raise_alerts([_scan("dev-0"), _scan("dev-1", detector="autoencoder")])
    later = hub.services.clock.now() + timedelta(hours=1)  # past the shipped 15 min cool-down
    bounded = detection.state(later, detection.playbook.guard_rails.cooldown_s)
    full = detection.state()
    assert bounded.quarantined_at == full.quarantined_at == {"dev-0": full.quarantined_at["dev-0"]}
    assert ("dev-1", "reattest") in full.last_action and ("dev-1", "reattest") not in bounded.last_action
    alerts = [_scan(d, T1 + 7200) for d in ("dev-0", "dev-1", "dev-2")]
    fleet = detection.fleet()
    assert plan(alerts, detection.playbook, fleet, bounded, later) == plan(alerts, detection.playbook, fleet, full,
                                                                           later)


def test_blast_radius_limits_automatic_quarantine_in_a_fleet_wide_change(hub: HubParts) -> None:
    """All ten devices of a model change behaviour together (a firmware update): the default playbook's 10 %
    blast radius quarantines one automatically; the rest wait for an operator and keep working."""
    ids = _fleet(hub, 10)
    actions = hub.services.detection.raise_alerts([_scan(d, T1 + i) for i, d in enumerate(ids)])
    quarantines = [a for a in actions if a.kind == "quarantine"]
    assert len(quarantines) == 10
    assert sum(a.outcome == "done" for a in quarantines) == 1
    assert sum(a.reason == "blast_radius" and a.outcome == "awaiting_approval" for a in quarantines) == 9
    assert sum(not _may_publish(hub, d) for d in ids) == 1


def test_alerts_raise_risk_that_the_default_policy_enforces_and_that_decays(hub: HubParts) -> None:
    """One strong anomaly leaves the device working; a second one within the hour pushes its risk past the
    default policy's very-high-risk containment (90); as the device behaves the risk decays and it works again."""
    _fleet(hub, 2)
    detection = hub.services.detection
    first = detection.raise_alerts([_scan("dev-0", detector="autoencoder")])
    assert [a.kind for a in first] == ["reattest"]  # the shipped playbook only asks to verify
    assert hub.services.posture.posture.require("dev-0").risk_score == 45
    assert _may_publish(hub, "dev-0")
    detection.raise_alerts([_scan("dev-0", T1 + 60, detector="autoencoder")])
    assert hub.services.posture.posture.require("dev-0").risk_score == 90
    assert not _may_publish(hub, "dev-0")
    assert _may_publish(hub, "dev-1")
    later = hub.services.clock.now() + timedelta(hours=2)
    assert detection.refresh_risk(later) == ["dev-0"]
    assert hub.services.posture.posture.require("dev-0").risk_score == 22
    assert _may_publish(hub, "dev-0")
    detection.refresh_risk(later + timedelta(hours=8))
    assert hub.services.posture.posture.require("dev-0").risk_score == 0


def test_alert_routes_metrics_ack_and_approval_are_decided_by_cedar(hub: HubParts) -> None:
    _fleet(hub, 2)
    alert = _scan("dev-1")
    actions = hub.services.detection.raise_alerts([alert])
    viewer, operator, admin = (hub.operator_token(r) for r in ("viewer", "operator", "security-admin"))
    listed = hub.client.get("/v1/alerts", headers=viewer)
    assert listed.status_code == 200 and [a["alert_id"] for a in listed.json()] == [alert.alert_id]
    shown = hub.client.get(f"/v1/alerts/{alert.alert_id}", headers=viewer).json()
    assert {a["kind"] for a in shown["actions"]} == {"quarantine", "reattest", "revoke"}
    assert hub.client.get("/v1/alerts/" + "0" * 64, headers=viewer).status_code == 404
    metrics = hub.client.get("/metrics", headers=viewer).text
    assert 'iotguard_alerts_total{detector="scan_fanout",severity="high"} 1.0' in metrics
    assert hub.client.post(f"/v1/alerts/{alert.alert_id}/ack", headers=viewer).status_code == 403
    acked = hub.client.post(f"/v1/alerts/{alert.alert_id}/ack", headers=operator)
    assert acked.status_code == 200 and acked.json()["acked_by"] == "test-operator"
    revoke = next(a for a in actions if a.kind == "revoke")
    url = f"/v1/response/actions/{revoke.id}/approve"
    assert hub.client.post(url, headers=operator).status_code == 403  # revoking needs a security admin
    assert hub.registry.device("dev-1").status == "active"
    done = hub.client.post(url, headers=admin)
    assert done.status_code == 200 and done.json()["outcome"] == "done"
    assert hub.registry.device("dev-1").status == "revoked"
    assert hub.client.post(url, headers=admin).status_code == 404  # approved once only


def test_activated_playbook_replaces_the_default(hub: HubParts, tmp_path: Path) -> None:
    from iotguard.hub.services.audit import OutboxAuditSink
    from iotguard.hub.services.detection import activate_playbook

    _fleet(hub, 2)
    book = (b'format = "iotguard-playbook/1"\nname = "watch-only"\nrevision = 2\n'
            b'[notify]\nwebhook = "https://127.0.0.1:9/hook"\n'
            b'[[rules]]\nname = "tell"\ndetectors = ["scan_fanout"]\nactions = ["notify"]\n')
    sink = OutboxAuditSink(hub.services.outbox, hub.services.clock)
    activate_playbook(Path(hub.cfg.data_dir), book, actor="olga", audit=sink, now=hub.services.clock.now())
    actions = hub.services.detection.raise_alerts([_scan("dev-1")])
    assert [(a.kind, a.outcome, a.playbook) for a in actions] == [("notify", "failed:notify_failed", "watch-only@2")]
    assert _may_publish(hub, "dev-1")


def _loopback_https(tmp_path: Path) -> tuple[Any, str, list[dict[str, Any]]]:
    """A real HTTPS server on 127.0.0.1 with a throwaway self-signed certificate; returns (server, CA path, bodies)."""
    import datetime as dt
    import ipaddress
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "hook.pem", tmp_path / "hook.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    bodies: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Hook)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, str(cert_path), bodies


def test_notify_posts_the_alert_to_the_playbook_webhook(hub: HubParts, tmp_path: Path) -> None:
    from iotguard.hub.services.detection import DetectionService, WebhookNotifier
    from iotguard.hub.stores.alerts import MemoryAlertStore

    server, ca, bodies = _loopback_https(tmp_path)
    try:
        _fleet(hub, 1)
        book = parse_playbook(
            f'format = "iotguard-playbook/1"\nname = "tell"\nrevision = 1\n'
            f'[notify]\nwebhook = "https://127.0.0.1:{server.server_address[1]}/hook"\n'
            f'[[rules]]\nname = "tell"\ndetectors = ["scan_fanout"]\nactions = ["notify"]\n'.encode())
        detection = DetectionService(MemoryAlertStore(), hub.services.posture, hub.registry.revoke, lambda: book,
                                     hub.services.clock, notifier=WebhookNotifier(lambda: book, verify=ca))
        alert = _scan("dev-0")
        assert [(a.kind, a.outcome) for a in detection.raise_alerts([alert])] == [("notify", "done")]
        assert len(bodies) == 1
        assert bodies[0]["alert_id"] == alert.alert_id and bodies[0]["alert"] == json.loads(alert.to_json())
        assert (bodies[0]["action"], bodies[0]["device"], bodies[0]["playbook"]) == ("notify", "dev-0", "tell@1")
        # A webhook whose certificate the hub does not trust is not sent anything.
        untrusted = DetectionService(MemoryAlertStore(), hub.services.posture, hub.registry.revoke, lambda: book,
                                     hub.services.clock, notifier=WebhookNotifier(lambda: book))
        assert [a.outcome for a in untrusted.raise_alerts([_scan("dev-0", T1 + 900)])] == ["failed:notify_failed"]
        assert len(bodies) == 1
    finally:
        server.shutdown()


def test_the_planner_sees_each_device_s_latest_alert_within_the_release_quiet_time(hub: HubParts) -> None:
    """``auto_release`` waits for ``release_quiet_s`` without an alert: the fleet view carries the latest one."""
    _fleet(hub, 3)
    detection = hub.services.detection
    detection.raise_alerts([_scan("dev-0"), _scan("dev-0", T1 + 300)])
    now = hub.services.clock.now()
    quiet = detection.playbook.guard_rails.release_quiet_s
    assert quiet == 1800
    latest = max(a.raised_at for a in detection.alerts(device_id="dev-0"))
    view = detection.fleet(now, quiet).devices
    assert view["dev-0"].last_alert_at == latest and view["dev-1"].last_alert_at is None
    assert detection.fleet(now + timedelta(seconds=quiet + 1), quiet).devices["dev-0"].last_alert_at is None
    assert detection.fleet().devices["dev-0"].last_alert_at is None  # no horizon: not read
