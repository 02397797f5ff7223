"""Mutual TLS end to end with real processes: ``iotguard hub`` on Mosquitto configured by
``iotguard broker config``, devices enrolled over HTTPS and publishing with their transport certificates."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from iotguard.sim import Fleet
from iotguard.tls import client_context
from tests.conftest import MosquittoTls
from tests.e2e.harness import HubProcess

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto]


@pytest.fixture
def hub_on_mosquitto(tmp_path: Path, mosquitto_tls: object) -> Iterator[tuple[HubProcess, MosquittoTls]]:
    hub = HubProcess(tmp_path)
    broker = hub.use_mosquitto(mosquitto_tls)  # type: ignore[arg-type]
    hub.start()
    yield hub, broker
    hub.stop()


def _rejected(hub: HubProcess, token: str) -> dict[str, int]:
    r = httpx.get(f"{hub.api_url}/v1/stats", headers={"Authorization": f"Bearer {token}"}, verify=hub.verify())
    return dict(r.json()["rejected_total"])


class _Device:
    """A raw MQTT client holding one device's transport certificate."""

    def __init__(self, hub: HubProcess, port: int, certfile: Path | None, client_id: str) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.tls_set_context(client_context(hub.ca_file, certfile=certfile))
        self.connected = threading.Event()
        self.c.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else self.connected.set()
        self.port = port

    def connect(self) -> bool:
        try:
            self.c.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self.c.loop_start()
        return self.connected.wait(3)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _wait_for(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_mosquitto_device_cannot_publish_on_another_devices_topic(
        hub_on_mosquitto: tuple[HubProcess, MosquittoTls], tmp_path: Path) -> None:
    hub, broker = hub_on_mosquitto
    token = hub.operator_token()
    fleet = Fleet(hub.provisioner(token), hub_url=hub.api_url, broker_url=hub.broker_url,
                  data_dir=tmp_path / "fleet", ack_timeout_s=3.0)
    try:
        fleet.add_devices(2)
        fleet.send_round()
        assert _wait_for(lambda: fleet.pending() == 0, 20), "mTLS fleet readings were not acknowledged"
        a, b = fleet.devices[0].agent, fleet.devices[1].agent
        attacker = _Device(hub, broker.port, a.dir / "transport.pem", "lateral")
        assert attacker.connect()
        before = _rejected(hub, token).get("malformed", 0)
        attacker.c.publish(b.sealer.topic, b"\x86junk-on-victim-topic", qos=1).wait_for_publish(5)
        attacker.c.publish(a.sealer.topic, b"\x86junk-on-own-topic", qos=1).wait_for_publish(5)
        # Only the publish on its own topic reaches the hub (as malformed); the lateral one never does.
        assert _wait_for(lambda: _rejected(hub, token).get("malformed", 0) >= before + 1)
        time.sleep(1.0)
        assert _rejected(hub, token).get("malformed", 0) == before + 1
        attacker.close()
    finally:
        fleet.close()


def test_mosquitto_device_without_certificate_cannot_connect(
        hub_on_mosquitto: tuple[HubProcess, MosquittoTls]) -> None:
    hub, broker = hub_on_mosquitto
    anonymous = _Device(hub, broker.port, None, "anonymous")
    assert not anonymous.connect()
    anonymous.close()
    with socket.create_connection(("127.0.0.1", broker.port), timeout=3) as s:  # plain TCP MQTT
        s.sendall(bytes.fromhex("101000044d5154540402003c0004706c6169"))
        s.settimeout(3)
        try:
            data = s.recv(16)
        except (ConnectionResetError, TimeoutError):
            data = b""
    assert not data.startswith(b"\x20")


def test_revoked_certificate_refused_by_broker(hub_on_mosquitto: tuple[HubProcess, MosquittoTls],
                                               tmp_path: Path) -> None:
    """``iotguard devices revoke`` (another process than the hub) rewrites the CRL and reloads Mosquitto."""
    hub, broker = hub_on_mosquitto
    fleet = Fleet(hub.provisioner(hub.operator_token()), hub_url=hub.api_url, broker_url=hub.broker_url,
                  data_dir=tmp_path / "fleet", ack_timeout_s=3.0)
    try:
        fleet.add_devices(1)
        agent = fleet.devices[0].agent
        before = _Device(hub, broker.port, agent.dir / "transport.pem", "before-revoke")
        assert before.connect()
        before.close()
        hub.cli("devices", "revoke", agent.device_id)

        def refused() -> bool:
            after = _Device(hub, broker.port, agent.dir / "transport.pem", "after-revoke")
            try:
                return not after.connect()
            finally:
                after.close()

        # The hub notices the CLI's change on its next maintenance tick (2 s), then rewrites and reloads.
        assert _wait_for(refused, timeout=20), "Mosquitto kept accepting a revoked transport certificate"
    finally:
        fleet.close()
