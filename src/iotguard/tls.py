"""TLS contexts for every hop (MQTT and HTTPS), TLS 1.3 only, and CA pinning.

Every iotguard TLS connection is authenticated by the fleet CA: clients
verify the server's certificate chain and host name against the CA file;
servers that authenticate clients (the broker) require a client
certificate from the same CA.

A device that has not enrolled yet holds only the SHA-256 fingerprint of
the fleet CA (in its enrollment code). :func:`fetch_pinned_ca` gets the CA
certificate from the chain the hub's TLS server presents, checks the
fingerprint, and only then is the CA trusted for a verified connection;
the enrollment token is never sent over a connection that was not verified
against the pinned CA.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotguard.errors import ConfigError, IntegrityError
from iotguard.identity import certificate_fingerprint

__all__ = [
    "MAX_CHAIN_CERTIFICATES",
    "client_context",
    "fetch_pinned_ca",
    "server_context",
]

log = logging.getLogger(__name__)

_ENCODING_DER = 2  # _ssl.ENCODING_DER, the format argument of the chain's Certificate.public_bytes
#: Most certificates read from a server's unverified chain while pinning.
MAX_CHAIN_CERTIFICATES = 8


def client_context(cafile: str | Path, *, certfile: str | Path | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context that verifies the server against ``cafile`` (host name checked).

    Args:
        cafile: The fleet CA certificate (PEM).
        certfile: PEM file holding the client certificate followed by its
            private key (mTLS), or None.

    Raises:
        ConfigError: a file is missing or does not hold what it should.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(cafile))
        if certfile is not None:
            ctx.load_cert_chain(str(certfile))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS credentials: {exc}") from None
    return ctx


def server_context(certfile: str | Path, *, client_cafile: str | Path | None = None,
                   crlfile: str | Path | None = None) -> ssl.SSLContext:
    """A TLS 1.3 server context; with ``client_cafile`` it requires a client certificate from that CA.

    Args:
        certfile: PEM file with the server certificate (then the CA
            certificate, so pinning clients can read the chain) and the key.
        client_cafile: CA that must have issued every client certificate.
        crlfile: PEM file with a CRL of that CA; revoked client certificates fail the handshake.

    Raises:
        ConfigError: unreadable credentials or CRL.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(str(certfile))
        if client_cafile is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(client_cafile))
            if crlfile is not None:
                ctx.load_verify_locations(cafile=str(crlfile))  # OpenSSL reads CRLs from a PEM file too
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS server credentials: {exc}") from None
    return ctx


def fetch_pinned_ca(host: str, port: int, fingerprint: str, *, timeout: float = 10.0) -> bytes:
    """Read the server's certificate chain without trusting it and return the CA matching ``fingerprint``.

    The connection is used for nothing else: the caller then connects again
    verifying against the returned CA, so a man in the middle can at most
    make pinning fail.

    Args:
        host: Hub API host.
        port: Hub API port.
        fingerprint: SHA-256 (hex) of the fleet CA certificate, from the enrollment code.
        timeout: Connect and handshake timeout in seconds.

    Returns:
        The CA certificate (PEM).

    Raises:
        IntegrityError: no certificate in the presented chain matches the fingerprint.
        ConfigError: the TLS library cannot expose the unverified chain.
        OSError: the server is unreachable.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only to read the chain; nothing is sent on this connection
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        sslobj = getattr(tls, "_sslobj", None)
        get_chain = getattr(sslobj, "get_unverified_chain", None)
        if get_chain is None:
            raise ConfigError("this Python's ssl module cannot read the server's certificate chain")
        chain = get_chain() or []
        ders: list[bytes] = []
        for cert in list(chain)[:MAX_CHAIN_CERTIFICATES]:
            public_bytes = getattr(cert, "public_bytes", None)
            if public_bytes is not None:
                ders.append(public_bytes(_ENCODING_DER))
    for der in ders:
        if certificate_fingerprint(der) == fingerprint:
            ca = x509.load_der_x509_certificate(der)
            return ca.public_bytes(serialization.Encoding.PEM)
    raise IntegrityError("the hub's TLS chain holds no certificate matching the pinned fleet CA fingerprint")
