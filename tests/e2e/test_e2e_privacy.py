"""Privacy at the source, end to end: a sniffer on the broker decrypts every
envelope (with the device's own session key, i.e. what the hub could see) and
finds only fields declared for purposes the subject consented to, even though
the sensors produce more; a withdrawal pushed from the hub stops collection."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iotguard.channel import TELEMETRY_FILTER, make_nonce
from iotguard.clock import SystemClock
from iotguard.crypto import get_suite
from iotguard.hub.service import Hub
from iotguard.privacy import load_contract
from iotguard.sim import Fleet
from iotguard.wire import associated_data, decode_envelope, decode_reading

pytestmark = pytest.mark.slow

SECRET_FIELDS = {"owner_name": "Alice Example", "wifi_ssid": "alice-home", "heart_rate_raw_trace": "1,2,3"}


@pytest.fixture
def hub(embedded_hub: Hub) -> Hub:
    return embedded_hub


class Sniffer:
    """Sees every telemetry payload the broker carries (it holds the hub's broker identity:
    under mTLS nothing else may read other devices' topics)."""

    def __init__(self, hub: Hub) -> None:
        from iotguard.tls import client_context

        addr = hub.broker_address
        host, port = addr.host, addr.port
        self.payloads: list[tuple[float, str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sniffer")
        self.client.tls_set_context(client_context(hub.ca_file, certfile=hub.tls.hub_mqtt_file))
        self.client.on_message = lambda _c, _u, m: self.payloads.append((time.monotonic(), m.topic, bytes(m.payload)))
        self.client.connect(host, int(port))
        self.client.subscribe(TELEMETRY_FILTER, qos=0)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_undeclared_and_unconsented_fields_never_on_the_wire(hub: Hub, tmp_path: Path) -> None:
    fleet = Fleet(lambda d, m: str(hub.lifecycle.add_device(d, m)), hub_url=hub.api_url,
                  broker_url=hub.broker_address.url, data_dir=tmp_path / "fleet", research_consent=0.5, seed=3,
                  consent_recorder=hub.services.consent.record_initial_consent)
    sniffer = Sniffer(hub)
    try:
        fleet.add_devices(10)
        for dev in fleet.devices:  # sensors that over-collect
            real = dev.sensor.sample
            dev.sensor.sample = lambda t, real=real: {**real(t), **SECRET_FIELDS}  # type: ignore[method-assign]
        agents = {d.agent.device_id: d for d in fleet.devices}
        time.sleep(0.3)
        for _ in range(8):
            fleet.send_round()
            time.sleep(0.05)

        # The operator records a withdrawal for one subject who had consented to research.
        target = next(d for d in fleet.devices
                      if d.agent.privacy is not None and "research" in _granted(d))
        subject = target.agent.privacy.pipeline._consent.subject_id  # type: ignore[union-attr]
        admin = hub.store.create_api_token("dpo", "privacy-officer", now=SystemClock().now())
        import httpx

        from iotguard.tls import client_context

        api = httpx.Client(base_url=hub.api_url, headers={"Authorization": f"Bearer {admin}"},
                           verify=client_context(hub.ca_file))
        r = api.post("/v1/consent", json={"subject_id": subject, "purpose": "research", "granted": False})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while "research" in _granted(target) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "research" not in _granted(target), "device did not apply the pushed withdrawal"
        withdrawn_at = time.monotonic()
        deadline = time.monotonic() + 10
        while hub.services.consent.privacy.unacknowledged_consent() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not hub.services.consent.privacy.unacknowledged_consent(), "hub never got the device's acknowledgement"
        for _ in range(80):  # 80 simulated minutes: research (hourly) would be due again
            fleet.send_round()
        deadline = time.monotonic() + 20
        while fleet.pending() and time.monotonic() < deadline:
            fleet.resend_due()
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        sniffer.close()
        fleet.close()

    assert sniffer.payloads
    seen_purposes: set[str] = set()
    for arrived, topic, payload in sniffer.payloads:
        for secret in SECRET_FIELDS.values():
            assert secret.encode() not in payload
        env = decode_envelope(payload)
        dev = agents.get(env.device_id)
        if dev is None or env.epoch != dev.agent.sealer.epoch:
            continue
        suite = get_suite(env.suite_id)
        try:
            plain = suite.open(dev.agent._keys.uplink, make_nonce(env.epoch, env.seq, suite.nonce_size),  # type: ignore[union-attr]
                               associated_data(env.header, topic), env.ciphertext)
        except Exception:
            continue  # injected forgeries are not part of this test
        reading = decode_reading(plain)
        contract = load_contract(dev.model)
        assert reading.purpose in contract.purposes
        declared = set(contract.purposes[reading.purpose].fields)
        assert set(reading.fields) <= declared, (dev.model, reading.purpose, reading.fields)
        assert not set(reading.fields) & set(SECRET_FIELDS)
        seen_purposes.add(reading.purpose)
        if dev is target and arrived > withdrawn_at + 0.5:
            assert reading.purpose != "research", "collection continued after the withdrawal"
    assert len(seen_purposes) >= 3


def _granted(dev) -> set[str]:  # type: ignore[no-untyped-def]
    consent = dev.agent.privacy.pipeline._consent
    return {p for p, d in consent.decisions.items() if d.granted}
