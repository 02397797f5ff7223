"""A data subject whose key cannot be used must not stall ingest for everyone (a batch retried forever
on KeyStoreError stopped every device of a hub process): the others are stored and acknowledged, that
subject's readings are refused by reason and not acknowledged, so its device keeps them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from iotguard.channel import ack_topic
from iotguard.config import HubConfig
from iotguard.hub.broker import BrokerAddress
from iotguard.hub.mqtt_ingest import MqttIngest
from iotguard.privacy.at_rest import device_owner, kek_label
from iotguard.wire import Reading

from .conftest import HubParts


def _message(mid: int, topic: str, payload: bytes) -> mqtt.MQTTMessage:
    m = mqtt.MQTTMessage(mid, topic.encode())
    m.payload, m.qos = payload, 1
    return m


def test_a_subject_whose_key_is_unusable_does_not_stall_the_batch(hub: HubParts, tmp_path: Path) -> None:
    broken, healthy = hub.agent("dev-broken"), hub.agent("dev-healthy")
    t0 = 1_700_000_000_000
    broken.submit(Reading(t0, {"temperature": 20.0}, "heating_control"))
    first = [(broken.sealer.topic, broken.last_envelope)]
    ingest = MqttIngest(hub.processor, BrokerAddress("127.0.0.1", 1), HubConfig(data_dir=str(tmp_path / "x")))
    acked: list[str] = []
    ingest._acknowledge = lambda batch, acks: acked.extend(t for t, _e in acks)  # type: ignore[method-assign]
    ingest._handle([(_message(1, *first[0]), time.monotonic())])
    assert hub.store.reading_count("dev-broken") == 1  # its data key exists now
    # The key that wraps dev-broken's data key disappears from the hub's key store.
    keyring = hub.store.cipher
    row = keyring.rows.row_by_owner(device_owner("dev-broken"))  # type: ignore[union-attr]
    hub.services.keystore.delete(kek_label(row.key_id))
    keyring._cache.clear()  # type: ignore[union-attr]
    acked.clear()
    broken.submit(Reading(t0 + 1, {"temperature": 21.0}, "heating_control"))
    healthy.submit(Reading(t0 + 1, {"temperature": 19.0}, "heating_control"))
    batch = [(_message(2, broken.sealer.topic, broken.last_envelope), time.monotonic()),
             (_message(3, healthy.sealer.topic, healthy.last_envelope), time.monotonic())]
    worker = threading.Thread(target=ingest._handle, args=(batch,), daemon=True)
    worker.start()
    worker.join(15)
    stalled = worker.is_alive()
    ingest._stop.set()  # lets a batch retried forever end
    assert not stalled, "the batch was retried forever: every device of this hub process waits"
    assert hub.store.reading_count("dev-healthy") == 1
    assert hub.store.reading_count("dev-broken") == 1  # the second reading refused, not stored
    assert acked == [ack_topic(healthy.sealer.segment, "dev-healthy")]  # no end-to-end ack for dev-broken
    assert hub.processor.stats.rejected["data_key_unavailable"] == 1
    # Once the reading is refused, the replay window must not hold it: a resend is judged again.
    retry = [(_message(4, broken.sealer.topic, broken.last_envelope), time.monotonic())]
    ingest._stop.clear()
    ingest._handle(retry)
    assert hub.processor.stats.rejected["data_key_unavailable"] == 2
    assert hub.processor.stats.rejected.get("replay", 0) == 0
