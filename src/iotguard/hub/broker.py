"""MQTT plumbing for the hub: broker URLs and the embedded broker.

The embedded broker is amqtt (pure Python, from PyPI) running on its own
event loop in a background thread, behind a TLS-terminating front in the
same loop (:mod:`iotguard.hub.broker_front`): devices and the hub connect
with mutual TLS 1.3 using certificates from the fleet CA, the identity is
the certificate's CN, and the Cedar-derived topic ACL is enforced, as on
Mosquitto. amqtt itself listens on a loopback port that only accepts the
front. It still binds to loopback only unless ``unsafe_public=True``.

``unsafe_plaintext=True`` instead exposes amqtt directly, without TLS and
without any device authentication (envelopes are still sealed end to end);
it is logged loudly and meant for closed test networks only.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from iotguard.admission import QuotaLimits
from iotguard.errors import ConfigError

if TYPE_CHECKING:  # the front imports amqtt; the agent imports this module for URLs only
    from iotguard.hub.broker_front import BrokerAccess, BrokerFront

__all__ = ["BrokerAddress", "EmbeddedBroker", "PubackTimeoutDigest", "parse_broker_url", "wait_for_port"]

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
    """amqtt broker in a background thread, behind the mTLS front.

    Args:
        bind: ``host:port`` devices connect to.
        access: Returns the front's access (TLS context with the CRL, topic
            grants, revoked serials); called at start and by :meth:`refresh`.
            Required unless ``unsafe_plaintext``.
        unsafe_public: Allow a non-loopback address.
        unsafe_plaintext: Serve plain MQTT without device authentication.
        publish_quota: Publishes a second and burst per device certificate at the front.

    Raises:
        ConfigError: a public bind address without ``unsafe_public``, or no
            ``access`` without ``unsafe_plaintext``.
    """

    def __init__(self, bind: str, *, access: Callable[[], BrokerAccess] | None = None,
                 unsafe_public: bool = False, unsafe_plaintext: bool = False,
                 publish_quota: QuotaLimits | None = None) -> None:
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"embedded broker bind must be host:port, got {bind!r}")
        if not host.startswith(_LOOPBACK) and not unsafe_public:
            raise ConfigError(
                "the embedded broker binds to loopback only; use Mosquitto for a networked fleet "
                "(or set unsafe_public, loudly)")
        if access is None and not unsafe_plaintext:
            raise ConfigError("the embedded broker needs device TLS access (or unsafe_plaintext, loudly)")
        if unsafe_plaintext:
            log.warning("UNSAFE: embedded MQTT broker on %s speaks plain MQTT WITHOUT TLS and WITHOUT device "
                        "authentication (unsafe_plaintext_broker); anyone who reaches the port can publish", bind)
        if unsafe_public:
            log.warning("UNSAFE: embedded MQTT broker listening on non-loopback address %s", bind)
        self.address = BrokerAddress(host, int(port), tls=not unsafe_plaintext)
        self._access = access
        self._publish_quota = publish_quota
        self._refresh_lock = threading.Lock()
        self.front: BrokerFront | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start listening; returns once the port accepts connections."""
        initial = self._access() if self._access is not None else None
        self._thread = threading.Thread(target=self._run, args=(initial,), name="iotguard-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("embedded broker did not start")
        if self._error is not None:
            raise ConfigError(f"embedded broker failed to start: {self._error}")

    def refresh(self) -> None:
        """Recompute access (CRL, grants) and apply it to the front; new handshakes use the new CRL."""
        if self._access is None or self.front is None or self._loop is None or self._loop.is_closed():
            return
        front, loop = self.front, self._loop
        # One refresh at a time (API threads and the upkeep thread), so a newer access is
        # never overwritten by an older one computed concurrently.
        with self._refresh_lock:
            access = self._access()

            async def apply() -> None:
                front.apply(access)

            # Wait until applied, so a device enrolled just now finds its grants when it connects.
            asyncio.run_coroutine_threadsafe(apply(), loop).result(timeout=10)

    def _run(self, initial: BrokerAccess | None) -> None:
        from amqtt.broker import Broker

        from iotguard.hub.broker_front import BrokerFront

        async def main() -> None:
            if initial is not None:
                backend_port = _free_loopback_port()
                secret = secrets.token_urlsafe(32)
                listen = f"127.0.0.1:{backend_port}"
                plugins: dict[str, Any] = {"iotguard.hub.broker_front.FrontSecretAuth": {"secret": secret}}
            else:
                listen = f"{self.address.host}:{self.address.port}"
                plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
            config: dict[str, Any] = {
                "listeners": {"default": {"type": "tcp", "bind": listen, "max_connections": 10000}},
                "plugins": plugins,
            }
            self._stop = asyncio.Event()
            broker = Broker(config)
            try:
                await broker.start()
                if initial is not None:
                    self.front = BrokerFront(self.address.host, self.address.port, ("127.0.0.1", backend_port),
                                             secret, initial, publish_quota=self._publish_quota)
                    await self.front.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            if self.front is not None:
                await self.front.close()
            await broker.shutdown()

        self._loop = asyncio.new_event_loop()
        for name in ("amqtt", "amqtt.broker", "amqtt.mqtt.protocol.handler", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _install_puback_digest()
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


class PubackTimeoutDigest(logging.Filter):
    """Folds amqtt's record per unacknowledged QoS 1 delivery into one warning a minute with the count.

    amqtt gives a client 5 s (hard-coded, Yakifo/amqtt#391) to acknowledge a QoS 1 delivery and logs
    each miss as an ERROR with a traceback; a slow subscriber, or a device that never acknowledges its
    commands, would otherwise write a traceback per message into the hub's log (and fill its disk).
    The broker drops such a delivery either way; devices resend what the hub did not acknowledge.
    """

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        #: Every miss seen by this filter.
        self.count = 0
        self._unreported = 0
        self._reported_at: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not (isinstance(exc, TimeoutError) and "PUBACK" in str(exc)):
            return True
        self.count += 1
        self._unreported += 1
        now = self._clock()
        if self._reported_at is not None and now - self._reported_at < self.interval_s:
            return False
        record.msg = ("embedded broker: %d QoS 1 deliveries not acknowledged by their client within 5 s "
                      "(dropped by the broker; devices resend what the hub did not acknowledge)")
        record.args = (self._unreported,)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._unreported, self._reported_at = 0, now
        return True


def _install_puback_digest() -> None:
    logger = logging.getLogger("amqtt.broker")
    if not any(isinstance(f, PubackTimeoutDigest) for f in logger.filters):
        logger.addFilter(PubackTimeoutDigest())


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
