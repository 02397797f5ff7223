"""MQTT plumbing for the hub: broker URLs and the embedded broker.

The embedded broker is amqtt (pure Python, from PyPI) running on its own
event loop in a background thread. It is for one-command use: it listens on
loopback only unless ``unsafe_public=True`` is given, because it has no
device authentication of its own (envelopes are still sealed and
authenticated end to end). Production uses Mosquitto with device mTLS.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from iotguard.errors import ConfigError

__all__ = ["BrokerAddress", "EmbeddedBroker", "parse_broker_url", "wait_for_port"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    """Where an MQTT broker listens."""

    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://host:port`` (or ``mqtts://``).

    Raises:
        ConfigError: not an MQTT URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"not an MQTT broker URL: {url!r}")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until a TCP port accepts connections.

    Raises:
        TimeoutError: nothing listens there within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port}") from None
            time.sleep(0.05)


_LOOPBACK = ("127.", "::1", "localhost")


class EmbeddedBroker:
    """amqtt broker in a background thread.

    Args:
        bind: ``host:port`` to listen on.
        unsafe_public: Allow a non-loopback address. The embedded broker has
            no device authentication; only use this on a closed network.

    Raises:
        ConfigError: a public bind address without ``unsafe_public``.
    """

    def __init__(self, bind: str, *, unsafe_public: bool = False) -> None:
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"embedded broker bind must be host:port, got {bind!r}")
        if not host.startswith(_LOOPBACK) and not unsafe_public:
            raise ConfigError(
                "the embedded broker has no device authentication and only binds to loopback; "
                "use Mosquitto for a networked fleet (or set unsafe_public, loudly)")
        if unsafe_public:
            log.warning("UNSAFE: embedded MQTT broker listening on %s without device authentication", bind)
        self.address = BrokerAddress(host, int(port))
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start listening; returns once the port accepts connections."""
        self._thread = threading.Thread(target=self._run, name="iotguard-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("embedded broker did not start")
        if self._error is not None:
            raise ConfigError(f"embedded broker failed to start: {self._error}")

    def _run(self) -> None:
        from amqtt.broker import Broker

        async def main() -> None:
            config: dict[str, Any] = {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.address.host}:{self.address.port}",
                                          "max_connections": 10000}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
            self._stop = asyncio.Event()
            broker = Broker(config)
            try:
                await broker.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await broker.shutdown()

        self._loop = asyncio.new_event_loop()
        for name in ("amqtt", "amqtt.broker", "amqtt.mqtt.protocol.handler", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    def stop(self) -> None:
        """Stop the broker and wait for its thread."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
