"""The hub's own TLS credentials, issued by the fleet CA and kept in its data directory.

``<data_dir>/fleet-ca.pem``
    The fleet CA certificate (what operators, the CLI and tests verify against).
``<data_dir>/tls/hub-mqtt.pem`` (0600)
    The hub's MQTT client certificate (CN ``iotguard-hub``, ``clientAuth``)
    followed by its Ed25519 transport key (ADR 0600).
``<data_dir>/tls/api.pem`` (0600)
    The REST API's server certificate, the CA certificate (so a device
    pinning the CA fingerprint can read it from the chain), and the key.
``<data_dir>/tls/console.pem`` (0600)
    A second API server certificate with an ECDSA P-256 key, for web
    browsers (they do not accept Ed25519 certificates); the API listener
    loads both and each client gets the one its handshake offers (ADR 1402).
``<data_dir>/tls/broker.pem`` (0600)
    The embedded broker's server certificate, the CA certificate, the key.

Each file is one atomic write, so a certificate never meets the wrong key.
:meth:`HubTls.ensure` (re)issues a file when it is missing, not from the
current CA, names other hosts, or has less than a third of its validity
left; the hub calls it at start and on a schedule.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.errors import ConfigError
from iotguard.fileio import atomic_write
from iotguard.identity.ca import FleetCA
from iotguard.identity.crl import issue_crl, issue_server_certificate

__all__ = ["HUB_MQTT_IDENTITY", "SERVER_CERT_VALIDITY", "HubTls", "add_browser_certificate"]

log = logging.getLogger(__name__)

#: CN of the hub's MQTT client certificate (its username on every broker).
HUB_MQTT_IDENTITY = "iotguard-hub"
#: Validity of the API and embedded-broker server certificates.
SERVER_CERT_VALIDITY = timedelta(days=90)
#: Validity of each CRL the embedded broker's front loads (rebuilt on every access refresh).
FRONT_CRL_VALIDITY = timedelta(days=2)


def _pem_bundle(cert: x509.Certificate, key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey, *,
                chain: bytes = b"") -> bytes:
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM) + chain + key_pem


@dataclass(frozen=True)
class HubTls:
    """Paths of the hub's TLS files and their issuance.

    Args:
        data_dir: The hub's data directory.
        ca: The fleet CA (signs inside the hub key store).
        client_validity: Validity of the hub's MQTT client certificate.
    """

    data_dir: Path
    ca: FleetCA
    client_validity: timedelta = timedelta(days=30)

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "fleet-ca.pem"

    @property
    def hub_mqtt_file(self) -> Path:
        return self.data_dir / "tls" / "hub-mqtt.pem"

    @property
    def api_file(self) -> Path:
        return self.data_dir / "tls" / "api.pem"

    @property
    def broker_file(self) -> Path:
        return self.data_dir / "tls" / "broker.pem"

    def ensure(self, now: datetime, *, api_names: Sequence[str] = (), broker_names: Sequence[str] = ()) -> bool:
        """Write whatever is missing or due for renewal; returns whether anything was (re)issued.

        Args:
            now: Issue time.
            api_names: Host names and addresses of the API certificate (empty: no API certificate).
            broker_names: Host names and addresses of the embedded broker's certificate (empty: none).

        Raises:
            ConfigError: a bad host name.
        """
        changed = False
        if not self.ca_file.exists() or self.ca_file.read_bytes() != self.ca.certificate_pem:
            atomic_write(self.ca_file, self.ca.certificate_pem, mode=0o644)
            changed = True
        if self._due(self.hub_mqtt_file, now, ()):
            key = Ed25519PrivateKey.generate()
            cert = self.ca.issue_device_certificate(HUB_MQTT_IDENTITY, key.public_key().public_bytes_raw(),
                                                    now=now, validity=self.client_validity, segment="hub")
            atomic_write(self.hub_mqtt_file, _pem_bundle(cert, key), mode=0o600)
            log.info("issued the hub's MQTT client certificate (serial %x)", cert.serial_number)
            changed = True
        for path, names in ((self.api_file, api_names), (self.broker_file, broker_names)):
            if names and self._due(path, now, names):
                key = Ed25519PrivateKey.generate()
                cert = issue_server_certificate(self.ca, names[0], key.public_key(), now, SERVER_CERT_VALIDITY,
                                                extra_names=list(dict.fromkeys(names[1:])))
                atomic_write(path, _pem_bundle(cert, key, chain=self.ca.certificate_pem), mode=0o600)
                log.info("issued TLS server certificate %s for %s", path.name, ", ".join(names))
                changed = True
        if api_names and self._due(self.console_file, now, api_names):
            console_key = ec.generate_private_key(ec.SECP256R1())
            cert = issue_server_certificate(self.ca, api_names[0], console_key.public_key(), now,
                                            SERVER_CERT_VALIDITY, extra_names=list(dict.fromkeys(api_names[1:])))
            atomic_write(self.console_file, _pem_bundle(cert, console_key, chain=self.ca.certificate_pem), mode=0o600)
            log.info("issued the console's ECDSA P-256 TLS certificate for %s", ", ".join(api_names))
            changed = True
        return changed

    def _due(self, path: Path, now: datetime, names: Sequence[str]) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return True
        try:
            self.ca.verify_device_certificate(cert, now=now)
        except Exception:  # IntegrityError: another CA, or expired
            return True
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        if cert.not_valid_after_utc - now < lifetime / 3:
            return True
        if names:
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                return True
            present = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | \
                set(san.get_values_for_type(x509.DNSName))
            return present != set(names)
        return False

    @property
    def console_file(self) -> Path:
        """The API's second (ECDSA P-256) server certificate, chain and key, for web browsers."""
        return self.data_dir / "tls" / "console.pem"

    @property
    def broker_crl_file(self) -> Path:
        return self.data_dir / "tls" / "broker-crl.pem"

    def write_crl(self, revoked: Sequence[tuple[int, datetime]], now: datetime) -> Path:
        """Issue a fresh CRL for the embedded broker's front and write it; returns its path.

        Raises:
            ConfigError: bad serials.
        """
        crl = issue_crl(self.ca, revoked, now=now, next_update=now + FRONT_CRL_VALIDITY)
        atomic_write(self.broker_crl_file, crl, mode=0o644)
        return self.broker_crl_file


def add_browser_certificate(context: ssl.SSLContext, tls: HubTls, console_tls_file: str = "") -> Path:
    """Load the API's browser certificate beside its Ed25519 one (ADR 1402); returns the file loaded.

    Args:
        context: The API listener's server context (already holding the Ed25519 certificate).
        tls: The hub's TLS files (``console.pem``, issued by the fleet CA, is the default).
        console_tls_file: An operator's PEM file (certificate chain, then the ECDSA or RSA key) from a CA
            browsers trust; used instead of ``console.pem`` when set.

    Raises:
        ConfigError: the configured file cannot be read or its key does not match its certificate.
    """
    path = Path(console_tls_file) if console_tls_file else tls.console_file
    try:
        context.load_cert_chain(str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"console TLS certificate {path} cannot be loaded: {type(exc).__name__}") from None
    return path
