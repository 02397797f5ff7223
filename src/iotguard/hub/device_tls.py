"""Devices identified by their TLS client certificate on the hub's HTTPS listener (ADR 1220).

The API listener asks every TLS client for a certificate from the fleet CA
(``CERT_OPTIONAL``: operators, browsers and devices before enrollment send
none; a certificate that is sent must verify against the fleet CA, or the
handshake fails). A device presents its transport certificate (ADR 0600).
:func:`accept_device_certificates` turns this on for a uvicorn listener and
hands the verified certificate's identity to the application, read once per
connection, as ``scope["extensions"]["tls"]["iotguard.peer"]``; routes read
it with :func:`peer_certificate`.

The identity is what the TLS stack verified (chain to the fleet CA,
validity, ``clientAuth``); whether the certificate is still the device's
current one is the registry's business (``transport_cert_serial``), checked
by the service that serves the route.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509

from iotguard.errors import ConfigError, IntegrityError
from iotguard.identity.transport import check_client_certificate

__all__ = ["PEER_KEY", "PeerCertificate", "accept_device_certificates", "peer_certificate", "peer_of"]

#: Key of the verified peer in the ASGI ``tls`` scope extension.
PEER_KEY = "iotguard.peer"


@dataclass(frozen=True)
class PeerCertificate:
    """The TLS client certificate of a connection, as the registry names it.

    Attributes:
        device_id: The certificate's CN (a device id, or ``iotguard-hub``).
        serial: Its serial number in lower-case hex (``devices.transport_cert_serial``).
    """

    device_id: str
    serial: str


def peer_of(der: bytes | None) -> PeerCertificate | None:
    """The identity of a client certificate the TLS stack verified (``None``: none, or not a client one)."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        identity = check_client_certificate(cert)
    except (ValueError, IntegrityError):
        return None
    return PeerCertificate(identity, format(cert.serial_number, "x"))


def peer_certificate(scope: Mapping[str, Any]) -> PeerCertificate | None:
    """The connection's verified client certificate, or ``None`` (no TLS, no certificate)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    peer = tls.get(PEER_KEY)
    return peer if isinstance(peer, PeerCertificate) else None


def _with_peer_certificate(protocol: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``protocol`` (a uvicorn HTTP protocol) whose application sees each connection's client certificate."""

    class PeerCertificateProtocol(protocol):  # type: ignore[valid-type,misc]
        app: Any  # the ASGI application uvicorn's protocols call

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sslobj = transport.get_extra_info("ssl_object")
            peer = peer_of(sslobj.getpeercert(binary_form=True) if sslobj is not None else None)
            app = self.app

            async def app_with_peer(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
                scope["extensions"] = {**(scope.get("extensions") or {}), "tls": {PEER_KEY: peer}}
                await app(scope, receive, send)

            self.app = app_with_peer
            super().connection_made(transport)

    return PeerCertificateProtocol


def accept_device_certificates(config: uvicorn.Config, ca_file: str | Path) -> None:
    """Make a loaded uvicorn HTTPS listener ask for fleet-CA client certificates and pass them on.

    Args:
        config: A loaded (``config.load()``) uvicorn configuration with TLS.
        ca_file: The fleet CA certificate.

    Raises:
        ConfigError: the listener has no TLS, or the CA cannot be loaded.
    """
    if not isinstance(config.ssl, ssl.SSLContext):
        raise ConfigError("device client certificates need an HTTPS listener")
    try:
        config.ssl.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the fleet CA for client certificates: {type(exc).__name__}") from None
    config.ssl.verify_mode = ssl.CERT_OPTIONAL
    config.http_protocol_class = _with_peer_certificate(config.http_protocol_class)
