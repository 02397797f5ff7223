"""The API listener presents Ed25519 to clients that take it and ECDSA P-256 to browsers (ADR 1402),
or the operator's own browser certificate when ``hub.console_tls_file`` is set."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotguard.errors import ConfigError
from iotguard.hub.tls import HubTls, add_browser_certificate
from tests.hub.conftest import make_hub
from tests.hub.console.conftest import HttpsHub, serve_https

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _peer(url: str, sigalgs: str) -> x509.Certificate:
    """The certificate a client offering only ``sigalgs`` receives (TLS 1.3)."""
    host = url.removeprefix("https://")
    out = subprocess.run(["openssl", "s_client", "-connect", host, "-tls1_3", "-sigalgs", sigalgs],
                         input=b"", capture_output=True, timeout=30, check=False).stdout
    start = out.index(b"-----BEGIN CERTIFICATE-----")
    end = out.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")
    return x509.load_pem_x509_certificate(out[start:end])


def _stop(served: HttpsHub) -> None:
    served.server.should_exit = True
    served.thread.join(timeout=10)
    served.hub.store.engine.dispose()


@pytest.fixture
def own_certificate(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "console.example.org")])
    now = datetime.now(tz=UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("console.example.org")]), critical=False)
            .sign(key, hashes.SHA256()))
    path = tmp_path / "console-own.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[HttpsHub]:
    s = serve_https(make_hub(tmp_path / "a"))
    yield s
    _stop(s)


def test_devices_get_ed25519_and_browsers_get_ecdsa_from_one_listener(served: HttpsHub) -> None:
    ed = _peer(served.url, "ed25519")
    ecdsa = _peer(served.url, "ECDSA+SHA256")
    assert ed.public_key_algorithm_oid.dotted_string == "1.3.101.112"  # Ed25519
    assert isinstance(ecdsa.public_key(), ec.EllipticCurvePublicKey)
    assert ed.issuer == ecdsa.issuer  # both from the fleet CA


def test_operators_own_browser_certificate_is_presented(tmp_path: Path, own_certificate: Path) -> None:
    s = serve_https(make_hub(tmp_path / "b", console_tls_file=str(own_certificate)))
    try:
        browser = _peer(s.url, "ECDSA+SHA256")
        assert browser.subject.rfc4514_string() == "CN=console.example.org"
        assert _peer(s.url, "ed25519").public_key_algorithm_oid.dotted_string == "1.3.101.112"
    finally:
        _stop(s)


def test_unreadable_or_mismatched_browser_certificate_is_a_config_error(tmp_path: Path, own_certificate: Path) -> None:
    import ssl

    hub = make_hub(tmp_path / "c")
    tls = HubTls(Path(hub.cfg.data_dir), hub.services.lifecycle.ca)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ConfigError):
        add_browser_certificate(context, tls, str(tmp_path / "missing.pem"))
    text = own_certificate.read_bytes()
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    mismatched = tmp_path / "mismatched.pem"
    mismatched.write_bytes(text.split(b"-----BEGIN PRIVATE KEY-----")[0] + other)
    with pytest.raises(ConfigError):
        add_browser_certificate(context, tls, str(mismatched))
    hub.store.engine.dispose()
