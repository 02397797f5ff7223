"""The embedded broker with device mTLS: a real hub process object (embedded broker, front, HTTPS API).

Devices enroll over HTTPS pinning the CA from their enrollment code, then
connect with their transport certificates, exactly as in ``iotguard demo``.
Each attack is one named test.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from iotguard.agent import Agent
from iotguard.config import AgentConfig, HubConfig
from iotguard.errors import ConfigError, EnrollmentError, IntegrityError
from iotguard.hub.service import Hub
from iotguard.tls import client_context
from tests.conftest import free_port

pytestmark = pytest.mark.slow


class _Seen:
    """Records every message that reaches hub ingest (observation only; the real processor runs)."""

    def __init__(self, hub: Hub) -> None:
        self.topics: list[str] = []
        original = hub.processor.process

        def process(batch: Any) -> Any:
            self.topics += [m.topic for m in batch]
            return original(batch)

        hub.processor.process = process  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("front")
    cfg = HubConfig(data_dir=str(root / "hub"), embedded_broker_bind=f"127.0.0.1:{free_port()}",
                    api_bind=f"127.0.0.1:{free_port()}")
    h = Hub(cfg)
    h.start()
    h.seen = _Seen(h)  # type: ignore[attr-defined]
    yield h
    h.stop()


def _agent(hub: Hub, device_id: str) -> Agent:
    cfg = AgentConfig(data_dir=str(Path(hub.cfg.data_dir).parent / "agents" / device_id), hub_url=hub.api_url,
                      broker_url=hub.broker_address.url, suites=["chacha20-poly1305"])
    agent = Agent(cfg, device_id)
    agent.enroll(str(hub.lifecycle.add_device(device_id, "thermo-1")))
    return agent


class _Client:
    def __init__(self, hub: Hub, client_id: str, *, certfile: Path | None, username: str | None = None,
                 tls: bool = True) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if tls:
            self.c.tls_set_context(client_context(hub.ca_file, certfile=certfile))
        if username is not None:
            self.c.username_pw_set(username, "guess")
        self.connected = threading.Event()
        self.done = threading.Event()
        self.closed = threading.Event()
        self.suback: list[int] = []
        self.subscribed = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_a: self.closed.set()
        self.c.on_subscribe = self._on_subscribe
        self.hub = hub

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self.connected.set()
        self.done.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        self.suback = [int(getattr(c, "value", c)) for c in codes]
        self.subscribed.set()

    def connect(self) -> bool:
        addr = self.hub.broker_address
        try:
            self.c.connect(addr.host, addr.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self.c.loop_start()
        self.done.wait(3)
        return self.connected.is_set()

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def subscribe(self, topic: str) -> list[int]:
        self.subscribed.clear()
        self.c.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)
        return self.suback

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _wait_seen(hub: Hub, topic: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if topic in hub.seen.topics:  # type: ignore[attr-defined]
            return True
        time.sleep(0.05)
    return False


def test_device_without_certificate_cannot_connect(hub: Hub) -> None:
    anonymous = _Client(hub, "no-cert", certfile=None)
    assert not anonymous.connect()
    assert hub.embedded_broker is not None and hub.embedded_broker.front is not None
    assert hub.embedded_broker.front.refused["tls_handshake"] >= 1
    anonymous.close()


def test_plain_tcp_connect_refused_by_default(hub: Hub) -> None:
    """A plain MQTT CONNECT to the broker port gets no CONNACK: there is no plain listener."""
    addr = hub.broker_address
    with socket.create_connection((addr.host, addr.port), timeout=3) as s:
        s.sendall(bytes.fromhex("101000044d5154540402003c0004706c6169"))  # CONNECT client id "plai"
        s.settimeout(3)
        try:
            data = s.recv(16)
        except (ConnectionResetError, TimeoutError):
            data = b""
    assert not data.startswith(b"\x20"), "broker answered a plaintext CONNECT"


def test_certificate_from_another_ca_cannot_connect(hub: Hub, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from iotguard.identity import FleetCA
    from iotguard.keys.software import SoftwareKeyStore

    other = FleetCA.create(SoftwareKeyStore(tmp_path / "ca"), name="attacker CA", now=datetime.now(tz=UTC))
    key = Ed25519PrivateKey.generate()
    cert = other.issue_device_certificate("dev-forged", key.public_key().public_bytes_raw(),
                                          now=datetime.now(tz=UTC), validity=timedelta(days=1))
    pem = tmp_path / "forged.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    forged = _Client(hub, "forged", certfile=pem)
    assert not forged.connect()
    forged.close()


def test_device_cannot_publish_on_another_devices_topic(hub: Hub) -> None:
    a, b = _agent(hub, "lat-a"), _agent(hub, "lat-b")
    victim = b.sealer.topic
    own = a.sealer.topic
    client = _Client(hub, "lat-a", certfile=a.dir / "transport.pem")
    assert client.connect()
    denied_before = hub.embedded_broker.front.refused["publish_denied"]  # type: ignore[union-attr]
    client.publish(victim, b"\x00" * 40)
    # Control: the same connection's publish on its own topic does reach the hub.
    client.publish(own, b"\x86junk")
    assert _wait_seen(hub, own)
    assert victim not in hub.seen.topics  # type: ignore[attr-defined]
    assert hub.embedded_broker.front.refused["publish_denied"] == denied_before + 1  # type: ignore[union-attr]
    client.close()
    a.close()
    b.close()


def test_device_cannot_subscribe_to_another_devices_or_wildcard_topics(hub: Hub) -> None:
    a, b = _agent(hub, "sub-a"), _agent(hub, "sub-b")
    client = _Client(hub, "sub-a", certfile=a.dir / "transport.pem")
    assert client.connect()
    segment = b.sealer.segment
    assert client.subscribe(f"iotguard/{segment}/sub-b/cmd") == [0x80]
    assert client.subscribe("iotguard/+/+/telemetry") == [0x80]
    assert client.subscribe("#") == [0x80]
    assert client.subscribe(f"iotguard/{segment}/sub-a/cmd") == [1]
    client.close()
    a.close()
    b.close()


def test_connect_username_cannot_claim_the_hub_identity(hub: Hub) -> None:
    """The identity is the certificate CN: a device claiming ``iotguard-hub`` gets device rights only."""
    a = _agent(hub, "claim-a")
    client = _Client(hub, "iotguard-hub", certfile=a.dir / "transport.pem", username="iotguard-hub")
    assert client.connect()
    assert client.subscribe("iotguard/+/+/telemetry") == [0x80]
    client.close()
    assert hub.ingest is not None and hub.ingest._connected.is_set()  # the hub's session was not taken over
    a.close()


def test_device_cannot_enroll_as_the_hub_identity(hub: Hub) -> None:
    from iotguard.errors import MalformedError

    with pytest.raises(MalformedError):
        hub.lifecycle.add_device("iotguard-hub", "thermo-1")


def test_revoked_certificate_refused_by_broker(hub: Hub) -> None:
    a = _agent(hub, "rev-a")
    live = _Client(hub, "rev-a", certfile=a.dir / "transport.pem")
    assert live.connect()
    hub.lifecycle.revoke("rev-a", reason="test")
    assert live.closed.wait(5), "the revoked device's open connection was not closed"
    again = _Client(hub, "rev-a-2", certfile=a.dir / "transport.pem")
    assert not again.connect()
    live.close()
    again.close()
    a.close()


def test_quarantined_device_cannot_publish_at_the_broker(hub: Hub) -> None:
    """A failed trust tier withdraws the device's publish grant at the broker (Cedar-derived ACL)."""
    a = _agent(hub, "quar-a")
    from iotguard.hub.policy_store import save_posture

    hub.services.posture.posture.update("quar-a", trust_tier="failed")  # as a tamper report does
    save_posture(hub.store.engine, [hub.services.posture.posture.require("quar-a")], now=hub.services.clock.now())
    time.sleep(1.0)  # the hub refreshes the front's access when the posture version changes
    client = _Client(hub, "quar-a", certfile=a.dir / "transport.pem")
    if client.connect():
        client.publish(a.sealer.topic, b"\x86junk")
    assert not _wait_seen(hub, a.sealer.topic, timeout=1.0)
    client.close()
    a.close()


def test_agent_pins_the_ca_from_its_enrollment_code(hub: Hub, tmp_path: Path) -> None:
    """A hub whose TLS chain does not hold the CA named in the code gets no token."""
    code = str(hub.lifecycle.add_device("pin-a", "thermo-1"))
    wrong = code[:-64] + "0" * 64
    agent = Agent(AgentConfig(data_dir=str(tmp_path / "pin"), hub_url=hub.api_url,
                              broker_url=hub.broker_address.url), "pin-a")
    with pytest.raises(IntegrityError):
        agent.enroll(wrong)
    assert not (tmp_path / "pin" / "ca.pem").exists()
    assert hub.store.get_device("pin-a").status == "pending"  # the token was never presented


def test_api_is_https_only_with_tls13(hub: Hub) -> None:
    url = hub.api_url
    assert url.startswith("https://")
    assert httpx.get(f"{url}/health", verify=client_context(hub.ca_file)).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/health", timeout=3)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(hub.ca_file)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", verify=old, timeout=3)


def test_hub_tls_keys_are_private(hub: Hub) -> None:
    for path in (hub.tls.hub_mqtt_file, hub.tls.api_file, hub.tls.broker_file):
        assert path.stat().st_mode & 0o077 == 0, path


def test_unsafe_plaintext_options_are_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from iotguard.hub.broker import EmbeddedBroker

    with pytest.raises(ConfigError):
        EmbeddedBroker(f"127.0.0.1:{free_port()}")  # no TLS access and no unsafe option
    with caplog.at_level(logging.WARNING):
        EmbeddedBroker(f"127.0.0.1:{free_port()}", unsafe_plaintext=True)
    assert any("UNSAFE" in r.getMessage() for r in caplog.records)


def test_agent_without_pinned_ca_refuses_https(tmp_path: Path, hub: Hub) -> None:
    from iotguard.keys import KeyKind

    agent = Agent(AgentConfig(data_dir=str(tmp_path / "nopin"), hub_url=hub.api_url), "nopin")
    agent.keystore.generate("identity", KeyKind.ED25519)
    with pytest.raises(EnrollmentError, match="no pinned fleet CA"):
        agent.renew_certificate()


def test_agent_keeps_publishing_after_renewal_revokes_its_old_transport_certificate(hub: Hub) -> None:
    a = _agent(hub, "renew-a")
    a.connect()
    assert a.connected
    old_serial = hub.store.get_device("renew-a").transport_cert_serial
    a.renew_certificate()  # the old transport certificate is revoked; the front drops the connection
    assert hub.store.get_device("renew-a").transport_cert_serial != old_serial
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if a.connected:
            a.publish_raw(a.sealer.topic, b"\x86after-renewal")
            if _wait_seen(hub, a.sealer.topic, timeout=0.5):
                break
    assert a.sealer.topic in hub.seen.topics  # type: ignore[attr-defined]
    a.close()


def test_oversized_packet_closes_the_connection_before_the_broker(hub: Hub) -> None:
    a = _agent(hub, "big-a")
    client = _Client(hub, "big-a", certfile=a.dir / "transport.pem")
    assert client.connect()
    before = hub.embedded_broker.front.refused["malformed"]  # type: ignore[union-attr]
    client.c.publish(a.sealer.topic, b"\x00" * 300_000, qos=0)  # over the 256 KiB + 1 KiB packet limit
    assert client.closed.wait(5), "the front kept a connection that sent an oversized packet"
    assert hub.embedded_broker.front.refused["malformed"] == before + 1  # type: ignore[union-attr]
    assert not _wait_seen(hub, a.sealer.topic, timeout=0.5)
    client.close()
    a.close()


def test_plaintext_urls_refused_without_unsafe_options(tmp_path: Path) -> None:
    from iotguard.config import load_config

    for env in ({"IOTGUARD_HUB__BROKER_URL": "mqtt://127.0.0.1:1883"},
                {"IOTGUARD_AGENT__BROKER_URL": "mqtt://127.0.0.1:1883"},
                {"IOTGUARD_AGENT__HUB_URL": "http://127.0.0.1:8080"}):
        with pytest.raises(ConfigError):
            load_config(None, env={**env, "IOTGUARD_CONFIG": "/nonexistent"})
    cfg = load_config(None, env={"IOTGUARD_CONFIG": "/nonexistent", "IOTGUARD_AGENT__BROKER_URL": "mqtt://h:1",
                                 "IOTGUARD_AGENT__UNSAFE_PLAINTEXT_BROKER": "true"})
    assert cfg.agent.unsafe_plaintext_broker
    agent = Agent(AgentConfig(data_dir=str(tmp_path / "plain"), hub_url="http://127.0.0.1:9",
                              broker_url="mqtt://127.0.0.1:9"), "plain")
    with pytest.raises(ConfigError):
        agent.connect(timeout=0.1)
    hub = Hub(HubConfig(data_dir=str(tmp_path / "hub"), broker_url="mqtt://127.0.0.1:9"))
    with pytest.raises(ConfigError):
        hub.start(api=False)
    hub.store.engine.dispose()
