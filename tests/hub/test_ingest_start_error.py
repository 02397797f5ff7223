"""A hub that cannot reach its broker says why: paho retries TCP and TLS failures silently, so the start-up
error probes the broker once and names what failed (a CI run once showed only "could not connect")."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from iotguard.config import HubConfig
from iotguard.hub.broker import BrokerAddress
from iotguard.hub.mqtt_ingest import MqttIngest

from .conftest import HubParts


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_is_named_in_the_start_error(hub: HubParts, tmp_path: Path) -> None:
    ingest = MqttIngest(hub.processor, BrokerAddress("127.0.0.1", _closed_port()),
                        HubConfig(data_dir=str(tmp_path / "x")))
    with pytest.raises(TimeoutError, match="ConnectionRefusedError"):
        ingest.start(timeout=0.5)
    ingest.stop()


def test_a_failed_tls_handshake_is_named_in_the_start_error(hub: HubParts, tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def not_tls() -> None:  # accepts, answers garbage instead of a TLS server hello, closes
        for _ in range(20):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.0 400 no\r\n\r\n")

    threading.Thread(target=not_tls, daemon=True).start()
    tls = ssl.create_default_context()
    ingest = MqttIngest(hub.processor, BrokerAddress("127.0.0.1", port, tls=True),
                        HubConfig(data_dir=str(tmp_path / "x")), tls=tls)
    try:
        with pytest.raises(TimeoutError, match="SSL"):
            ingest.start(timeout=0.5)
    finally:
        ingest.stop()
        listener.close()
