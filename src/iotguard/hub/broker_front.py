"""A TLS-terminating front for the embedded broker: device mTLS, identity from the certificate, topic ACL.

amqtt (the embedded broker) can listen with TLS but verifies client
certificates only optionally and cannot take the MQTT identity from one.
So in the hub process the broker listens on a loopback port that accepts
only the front (every CONNECT the front forwards carries a per-process
random secret that amqtt's :class:`FrontSecretAuth` plugin checks), and the
front faces the devices:

- TLS 1.3 with a client certificate issued by the fleet CA required, the
  fleet CRL checked in the handshake (the context is rebuilt on every
  access refresh), ``clientAuth`` usage and one CN required;
- the identity is the certificate CN: the CONNECT username and password
  are replaced, and the client id is prefixed with ``<CN>/`` so no client
  can take over another's session;
- every PUBLISH topic and SUBSCRIBE filter is checked against the access
  list derived from the Cedar policies (the same grants the Mosquitto ACL
  holds); a refused PUBLISH is dropped (QoS 1 still gets its PUBACK, as
  Mosquitto does for MQTT 3.1.1), a refused filter gets SUBACK failure
  ``0x80``, a refused will topic gets CONNACK "not authorized";
- connections whose certificate becomes revoked, or whose identity loses
  every grant, are closed at the next access refresh;
- each device certificate has a publish quota (a token bucket, ADR 1500):
  over it, the front stops reading that connection until a token is due,
  so a flooding device is slowed down by TCP back-pressure, nothing is
  dropped and other connections are served as before (counted in
  ``throttled``). The hub's own identity has no quota.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session
from cryptography import x509

from iotguard.admission import QuotaLimits, QuotaTable
from iotguard.errors import IntegrityError, MalformedError
from iotguard.hub import mqtt_frames as mf
from iotguard.hub.tls import HUB_MQTT_IDENTITY
from iotguard.identity.transport import check_client_certificate

__all__ = ["BrokerAccess", "BrokerFront", "FrontSecretAuth"]

log = logging.getLogger(__name__)

_HANDSHAKE_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 10.0
_BROKER_PACKET_LIMIT = 268_435_455


@dataclass(frozen=True)
class BrokerAccess:
    """What the front enforces: TLS server context (with the CRL), grants, revoked serials."""

    context: ssl.SSLContext
    acl: mf.AccessList
    revoked: frozenset[int] = frozenset()


class FrontSecretAuth(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt authentication plugin: only connections that carry the front's secret are accepted."""

    @dataclass
    class Config:
        """The per-process secret the front puts into every CONNECT it forwards."""

        secret: str = ""

    async def authenticate(self, *, session: Session) -> bool:
        expected = str(getattr(self.config, "secret", "") or "")
        given = session.password or ""
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        return bool(expected) and hmac.compare_digest(given_bytes, expected.encode())


@dataclass(eq=False)
class _Conn:
    identity: str
    serial: int
    writer: asyncio.StreamWriter
    backend: asyncio.StreamWriter | None = None
    #: SUBSCRIBE packet id -> per-filter allowed flags, to merge the broker's SUBACK.
    pending_subs: dict[int, list[bool]] = field(default_factory=dict)


class BrokerFront:
    """The device-facing listener of the embedded broker.

    Args:
        host: Address devices connect to.
        port: Port devices connect to.
        backend: ``(host, port)`` of the amqtt listener (loopback).
        secret: The secret :class:`FrontSecretAuth` expects.
        access: Initial access (context, grants, revoked serials).
        max_packet_bytes: Largest MQTT packet accepted from a client.
        publish_quota: Publishes a second and burst per device certificate (rate 0: none).
    """

    def __init__(self, host: str, port: int, backend: tuple[str, int], secret: str, access: BrokerAccess,
                 *, max_packet_bytes: int = 262_144 + 1_024,
                 publish_quota: QuotaLimits | None = None) -> None:
        self.host = host
        self.port = port
        self.backend = backend
        self._secret = secret.encode()
        self.access = access
        self.max_packet_bytes = max_packet_bytes
        self.refused: collections.Counter[str] = collections.Counter()
        #: Publishes delayed because their device was over its quota.
        self.throttled = 0
        self._quota = QuotaTable(publish_quota) if publish_quota is not None and publish_quota.enabled else None
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (plain TCP; each connection is upgraded to TLS with the current context)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=1 << 16)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            self._drop(conn)
        if self._server is not None:
            await self._server.wait_closed()

    def apply(self, access: BrokerAccess) -> None:
        """Use new access (call on the front's event loop); closes connections that lost it."""
        self.access = access
        granted = access.acl.identities()
        for conn in list(self._conns):
            if conn.serial in access.revoked or conn.identity not in granted:
                log.warning("broker front: closing %s (certificate revoked or no access left)", conn.identity)
                self.refused["access_withdrawn"] += 1
                self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        for w in (conn.writer, conn.backend):
            if w is not None and not w.is_closing():
                w.close()

    # -- one connection ------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError, EOFError):
            pass
        except MalformedError as exc:  # e.g. an oversized first packet
            self.refused["malformed"] += 1
            log.info("broker front: closing a connection: %s", exc)
        except Exception:
            log.exception("broker front: connection failed")
        finally:
            if not writer.is_closing():
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        access = self.access
        try:
            await writer.start_tls(access.context, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT_S)
        except (TimeoutError, ssl.SSLError, OSError, ConnectionError) as exc:
            self.refused["tls_handshake"] += 1
            log.info("broker front: TLS handshake refused: %s", exc)
            return
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            self.refused["no_certificate"] += 1
            return
        try:
            cert = x509.load_der_x509_certificate(der)
            identity = check_client_certificate(cert)
        except (ValueError, IntegrityError) as exc:
            self.refused["bad_certificate"] += 1
            log.warning("broker front: refused a client certificate: %s", exc)
            return
        if cert.serial_number in self.access.revoked:
            self.refused["revoked"] += 1
            return
        conn = _Conn(identity, cert.serial_number, writer)
        first = await asyncio.wait_for(self._read_frame(reader), _CONNECT_TIMEOUT_S)
        if first is None or first[0] >> 4 != mf.CONNECT:
            self.refused["protocol"] += 1
            return
        try:
            connect = mf.parse_connect(first[1])
        except MalformedError as exc:
            self.refused["protocol"] += 1
            writer.write(mf.encode_connack(mf.CONNACK_UNACCEPTABLE_PROTOCOL))
            log.info("broker front: bad CONNECT from %s: %s", identity, exc)
            return
        if connect.will_topic is not None and not self.access.acl.may_publish(identity, connect.will_topic):
            self.refused["will_denied"] += 1
            writer.write(mf.encode_connack(mf.CONNACK_NOT_AUTHORIZED))
            return
        client_id = f"{identity}/{connect.client_id or secrets.token_hex(8)}"
        b_reader, b_writer = await asyncio.open_connection(*self.backend, limit=1 << 16)
        conn.backend = b_writer
        self._conns.add(conn)
        try:
            b_writer.write(mf.encode_connect(connect.with_identity(client_id, identity, self._secret)))
            up = asyncio.ensure_future(self._client_to_broker(conn, reader, b_writer))
            down = asyncio.ensure_future(self._broker_to_client(conn, b_reader, writer))
            _done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        finally:
            self._drop(conn)

    async def _read_frame(self, reader: asyncio.StreamReader, limit: int | None = None) -> tuple[int, bytes] | None:
        limit = self.max_packet_bytes if limit is None else limit
        head = await reader.read(1)
        if not head:
            return None
        length, shift = 0, 0
        for _ in range(4):
            b = (await reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            raise MalformedError("MQTT remaining length longer than 4 bytes")
        if length > limit:
            raise MalformedError(f"MQTT packet of {length} bytes exceeds the limit")
        return head[0], await reader.readexactly(length)

    async def _client_to_broker(self, conn: _Conn, reader: asyncio.StreamReader,
                                backend: asyncio.StreamWriter) -> None:
        try:
            while (frame := await self._read_frame(reader)) is not None:
                first, body = frame
                kind = first >> 4
                if kind == mf.PUBLISH:
                    topic, qos, packet_id = mf.parse_publish(first & 0x0F, body)
                    if not self.access.acl.may_publish(conn.identity, topic):
                        self.refused["publish_denied"] += 1
                        log.warning("broker front: %s may not publish on %s; dropped", conn.identity, topic)
                        if qos == 2:
                            return  # no QoS 2 flow is emulated: end the connection
                        if qos == 1 and packet_id is not None:
                            conn.writer.write(mf.encode_puback(packet_id))
                        continue
                    await self._charge(conn.identity)
                elif kind == mf.SUBSCRIBE:
                    packet_id, filters = mf.parse_subscribe(first & 0x0F, body)
                    allowed = [self.access.acl.may_subscribe(conn.identity, f) for f, _q in filters]
                    if not all(allowed):
                        self.refused["subscribe_denied"] += allowed.count(False)
                        log.warning("broker front: %s may not subscribe to %s", conn.identity,
                                    [f for (f, _q), ok in zip(filters, allowed, strict=True) if not ok])
                    if not any(allowed):
                        conn.writer.write(mf.encode_suback(packet_id, bytes([mf.SUBACK_FAILURE] * len(filters))))
                        continue
                    conn.pending_subs[packet_id] = allowed
                    kept = b"".join(len(f.encode()).to_bytes(2, "big") + f.encode() + bytes((q,))
                                    for (f, q), ok in zip(filters, allowed, strict=True) if ok)
                    body = packet_id.to_bytes(2, "big") + kept
                elif kind == mf.CONNECT:
                    self.refused["protocol"] += 1
                    return
                backend.write(bytes((first,)) + mf.encode_remaining_length(len(body)) + body)
                await backend.drain()
        except MalformedError as exc:
            self.refused["malformed"] += 1
            log.info("broker front: closing %s: %s", conn.identity, exc)

    async def _charge(self, identity: str) -> None:
        """Take a publish token for ``identity``, waiting (not reading its socket) until one is due."""
        if self._quota is None or identity == HUB_MQTT_IDENTITY:
            return
        loop = asyncio.get_running_loop()
        bucket = self._quota.bucket(identity, loop.time())
        if not bucket.take(loop.time()):
            self.throttled += 1
            while not bucket.take(loop.time()):
                await asyncio.sleep((1.0 - bucket.level(loop.time())) / bucket.rate)

    async def _broker_to_client(self, conn: _Conn, reader: asyncio.StreamReader,
                                client: asyncio.StreamWriter) -> None:
        # The broker is trusted, but its packets are framed the same way.
        while (frame := await self._read_frame(reader, _BROKER_PACKET_LIMIT)) is not None:
            first, body = frame
            if first >> 4 == mf.SUBACK:
                packet_id, codes = mf.parse_suback(body)
                allowed = conn.pending_subs.pop(packet_id, None)
                if allowed is not None:
                    it = iter(codes)
                    merged = bytes(next(it, mf.SUBACK_FAILURE) if ok else mf.SUBACK_FAILURE for ok in allowed)
                    body = packet_id.to_bytes(2, "big") + merged
            client.write(bytes((first,)) + mf.encode_remaining_length(len(body)) + body)
            await client.drain()

    def stats(self) -> dict[str, Any]:
        """Connections open and refusals by reason."""
        return {"connections": len(self._conns), "refused": dict(self.refused), "throttled": self.throttled}
