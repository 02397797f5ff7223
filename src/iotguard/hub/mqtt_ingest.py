"""MQTT side of ingest: subscribe, batch, process, then acknowledge.

The hub subscribes with QoS 1, a persistent session (``clean_session`` off)
and manual acknowledgements: a message's PUBACK goes to the broker only
after the batch holding it is committed. After the commit the hub also
publishes an authenticated end-to-end acknowledgement to each device, which
is what lets a device delete a reading from its disk buffer; so a reading
survives a crash of the hub, of the broker, or of both.
"""

from __future__ import annotations

import collections
import logging
import socket
import ssl
import threading
import time
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iotguard.channel import MEDIA_FILTER, TELEMETRY_FILTER
from iotguard.config import HubConfig
from iotguard.errors import ConfigError, StorageError
from iotguard.hub.broker import BrokerAddress
from iotguard.hub.ingest import Incoming, IngestProcessor
from iotguard.hub.stores.telemetry import SubjectKeyUnavailable

__all__ = ["TELEMETRY_FILTER", "MqttIngest"]

log = logging.getLogger(__name__)

_SHARE_GROUP = "iotguard-hub"
_RETRY_MAX_S = 5.0


class MqttIngest:
    """Runs ingest against a broker until stopped."""

    def __init__(self, processor: IngestProcessor, broker: BrokerAddress, cfg: HubConfig, *,
                 shared: bool | None = None, client_id: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.processor = processor
        self.cfg = cfg
        self.broker = broker
        self.shared = cfg.shared_subscription if shared is None else shared
        # A deque append is atomic and lock-free under the GIL: the network
        # thread only appends and signals; the batch worker drains.
        self._queue: collections.deque[tuple[mqtt.MQTTMessage, float]] = collections.deque()
        self._arrived = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or cfg.mqtt_client_id,
            clean_session=False, manual_ack=True, protocol=mqtt.MQTTv311,
        )
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(cast(int, 0.2), 5)  # paho accepts fractional seconds
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        if broker.tls:
            if tls is None:
                raise ConfigError(f"{broker.url} needs the hub's TLS client context")
            self._client.tls_set_context(tls)
        self._tls = tls if broker.tls else None  # what the probe speaks: TLS only to an mqtts:// broker
        self._worker = threading.Thread(target=self._run, name="iotguard-ingest", daemon=True)

    @property
    def topic_filter(self) -> str:
        return f"$share/{_SHARE_GROUP}/{TELEMETRY_FILTER}" if self.shared else TELEMETRY_FILTER

    @property
    def media_filter(self) -> str:
        return f"$share/{_SHARE_GROUP}/{MEDIA_FILTER}" if self.shared else MEDIA_FILTER

    def start(self, timeout: float = 15.0) -> None:
        """Connect, subscribe and start the batch worker."""
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self.cfg.broker_keepalive_s)
        self._client.loop_start()
        self._worker.start()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"hub could not connect to the broker at {self.broker.url}: {self._probe()}")

    def _probe(self) -> str:
        """Why a connection fails, for the start-up error: paho retries TCP and TLS failures silently."""
        try:
            with socket.create_connection((self.broker.host, self.broker.port), timeout=5) as raw:
                if self._tls is None:
                    return "TCP connects; no CONNACK came"
                with self._tls.wrap_socket(raw, server_hostname=self.broker.host):
                    return "TCP and TLS connect; no CONNACK came"
        except OSError as exc:  # ssl.SSLError is one
            return f"{type(exc).__name__}: {exc}"

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish a hub-to-device message (QoS 1)."""
        self._client.publish(topic, payload, qos=1)

    def stop(self) -> None:
        """Finish the batch in progress, then disconnect."""
        self._stop.set()
        self._worker.join(timeout=15)
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks (network thread) -------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the hub: %s", reason)
            return
        client.subscribe([(self.topic_filter, 1), (self.media_filter, 1)])
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("hub lost the broker connection (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.append((msg, time.monotonic()))
        if not self._arrived.is_set():
            self._arrived.set()

    # -- batch worker ----------------------------------------------------

    def _next_batch(self) -> list[tuple[mqtt.MQTTMessage, float]]:
        if not self._queue:
            self._arrived.clear()
            if not self._queue and not self._arrived.wait(0.2):
                return []
        # Let the batch fill for up to batch_max_wait_ms (polling in small
        # steps, not per message, so the network thread keeps the GIL).
        deadline = time.monotonic() + self.cfg.batch_max_wait_ms / 1000.0
        limit = self.cfg.batch_max_messages
        while len(self._queue) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.002))
        q = self._queue
        return [q.popleft() for _ in range(min(limit, len(q)))]

    def _run(self) -> None:
        while not (self._stop.is_set() and not self._queue):
            batch = self._next_batch()
            if batch:
                self._handle(batch)

    def _handle(self, arrivals: list[tuple[mqtt.MQTTMessage, float]]) -> None:
        batch = [m for m, _t in arrivals]
        incoming = [Incoming(m.topic, bytes(m.payload), m, t) for m, t in arrivals]
        delay = 0.1
        while True:
            try:
                outcome = self.processor.process(incoming)
                break
            except SubjectKeyUnavailable as exc:
                # Retrying cannot help and would stall every device of this process behind one data
                # subject: store the others, refuse that subject's readings (the devices keep them).
                log.error("a batch of %d was not stored (%s); storing its messages one by one", len(batch), exc)
                self._handle_singly(batch)
                return
            except StorageError as exc:
                # Nothing was stored and nothing is acknowledged: retry the
                # same batch until the database is back.
                log.error("storing a batch of %d failed (%s); retrying in %.1fs", len(batch), exc, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, _RETRY_MAX_S)
            except Exception:
                log.exception("ingest bug on a batch of %d; processing its messages one by one", len(batch))
                self._handle_singly(batch)
                return
        self._acknowledge(batch, outcome.acks)

    def _handle_singly(self, batch: list[mqtt.MQTTMessage]) -> None:
        for m in batch:
            try:
                outcome = self.processor.process([Incoming(m.topic, bytes(m.payload), m)])
            except SubjectKeyUnavailable:
                # Refused, not lost: no end-to-end acknowledgement, so the device keeps the reading and
                # sends it again; the broker may forget this copy.
                self.processor.stats.rejected["data_key_unavailable"] += 1
                outcome = None
            except StorageError:
                log.error("storage failed while isolating a bad message; it will be redelivered")
                continue
            except Exception:
                log.exception("message on %s crashed ingest; rejected as internal_error", m.topic)
                self.processor.stats.rejected["internal_error"] += 1
                outcome = None
            self._acknowledge([m], outcome.acks if outcome else {})

    def _acknowledge(self, batch: list[mqtt.MQTTMessage], acks: dict[tuple[str, int], bytes]) -> None:
        for m in batch:
            if m.qos > 0:
                self._client.ack(m.mid, m.qos)
        for (topic, _epoch), body in acks.items():
            self._client.publish(topic, body, qos=0)
