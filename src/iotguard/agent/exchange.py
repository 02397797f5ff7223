"""The agent's signed credential exchanges with the hub: the answer to an
enrollment or re-key, the transport certificate, renewal and the tamper report.

Functions over an :class:`~iotguard.agent.runtime.Agent`; the agent's methods
of the same names delegate here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from iotguard.channel import session_info, split_session_keys
from iotguard.crypto import get_suite
from iotguard.errors import EnrollmentError, IntegrityError, IotGuardError
from iotguard.fileio import atomic_write
from iotguard.identity import b64d, certificate_fingerprint, hub_response_message, session_salt, verify_signature
from iotguard.identity.transport import check_transport_certificate
from iotguard.keys import TamperResponsive

if TYPE_CHECKING:
    from iotguard.agent.runtime import Agent

__all__ = ["CA_FILE", "IDENTITY_KEY", "TRANSPORT_FILE", "finish_exchange", "install_transport", "new_transport_key",
           "renew_certificate", "respond_to_tamper"]

log = logging.getLogger(__name__)

#: The TLS client certificate and, after it, the transport key (ADR 0600); one file so both change atomically.
TRANSPORT_FILE = "transport.pem"
#: The fleet CA certificate pinned at enrollment.
CA_FILE = "ca.pem"
#: Label of the device identity key in the key store.
IDENTITY_KEY = "identity"


def new_transport_key() -> tuple[Ed25519PrivateKey, bytes]:
    """A fresh TLS transport key (outside the key store, ADR 0600) and its raw public key."""
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes_raw()


def finish_exchange(agent: Agent, transcript: bytes, kex_label: str, resp: dict[str, Any],
                    ca_fingerprint: str | None, epoch: int, transport_key: Ed25519PrivateKey | None = None) -> None:
    """Check the hub's signed enrollment / re-key answer; install the new session (and transport) keys.

    Raises:
        EnrollmentError: the answer is for another device or epoch, or does not verify.
    """
    ca_pem = str(resp["ca_certificate_pem"]).encode()
    if ca_fingerprint is not None:
        if certificate_fingerprint(ca_pem) != ca_fingerprint:
            raise EnrollmentError("hub presented a CA that does not match the enrollment code")
        atomic_write(agent.dir / CA_FILE, ca_pem, mode=0o644)
    else:
        pinned = (agent.dir / CA_FILE).read_bytes()
        if certificate_fingerprint(pinned) != certificate_fingerprint(ca_pem):
            raise EnrollmentError("hub presented a different CA than the one pinned at enrollment")
    ca_key = x509.load_pem_x509_certificate(ca_pem).public_key()
    if not isinstance(ca_key, Ed25519PublicKey):
        raise EnrollmentError("fleet CA key is not Ed25519")
    hub_pub = b64d(str(resp["hub_kex_public_key"]), what="hub key", length=32)
    suite_name = str(resp["suite"])
    if int(resp["epoch"]) != epoch or resp["device_id"] != agent.device_id:
        raise EnrollmentError("hub response is for another device or epoch")
    segment = str(resp["segment"])
    transport_pem = str(resp.get("transport_certificate_pem", ""))
    fields = {"device_id": agent.device_id, "epoch": epoch, "suite": suite_name, "segment": segment,
              "hub_kex_public_key": hub_pub, "certificate_pem": resp["certificate_pem"],
              "transport_certificate_pem": transport_pem}
    try:
        verify_signature(ca_key.public_bytes_raw(), b64d(str(resp["signature"]), what="signature"),
                         hub_response_message(transcript, fields))
    except IntegrityError:
        raise EnrollmentError("hub response signature does not verify") from None
    if transport_key is not None:
        install_transport(agent, transport_key, transport_pem.encode())
    suite = get_suite(suite_name)
    material = agent.keystore.derive(kex_label, hub_pub, salt=session_salt(transcript, hub_pub),
                                    info=session_info(agent.device_id, epoch, suite_name),
                                    length=suite.key_size + 32)
    keys = split_session_keys(material, suite.key_size)
    if resp.get("certificate_pem"):
        atomic_write(agent.dir / "device.pem", str(resp["certificate_pem"]).encode())
    agent._save_session(epoch, suite_name, keys, segment)
    agent.keystore.delete(kex_label)
    agent._install(epoch, suite_name, keys, segment)


def install_transport(agent: Agent, key: Ed25519PrivateKey, cert_pem: bytes) -> None:
    """Check the transport certificate and store it with its key (0600, one atomic file).

    Raises:
        EnrollmentError: the certificate is not the fleet CA's client certificate for this key.
    """
    ca = x509.load_pem_x509_certificate((agent.dir / CA_FILE).read_bytes())
    try:
        check_transport_certificate(cert_pem, device_id=agent.device_id, ca_certificate=ca, now=agent.clock.now(),
                                    transport_public_key=key.public_key().public_bytes_raw())
    except IntegrityError as exc:
        raise EnrollmentError(f"hub returned an unusable transport certificate: {exc}") from None
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic_write(agent.dir / TRANSPORT_FILE, cert_pem.rstrip(b"\n") + b"\n" + key_pem, mode=0o600)
    if agent._tls is not None:
        # The superseded certificate is revoked at once: reconnects must present the new one.
        agent._tls.load_cert_chain(str(agent.dir / TRANSPORT_FILE))


def renew_certificate(agent: Agent) -> None:
    """Get a fresh operational certificate for the same identity key.

    Raises:
        EnrollmentError: the hub refused or its answer did not verify.
    """
    transport_key, transport_pk = new_transport_key()
    wire, transcript = agent._signed("renew", {"transport_public_key": transport_pk})
    resp = agent._post("/v1/renew", wire)
    ca = x509.load_pem_x509_certificate((agent.dir / CA_FILE).read_bytes()).public_key()
    if not isinstance(ca, Ed25519PublicKey):
        raise EnrollmentError("fleet CA key is not Ed25519")
    transport_pem = str(resp.get("transport_certificate_pem", ""))
    fields = {"device_id": agent.device_id, "certificate_pem": resp["certificate_pem"],
              "transport_certificate_pem": transport_pem}
    try:
        verify_signature(ca.public_bytes_raw(), b64d(str(resp["signature"]), what="signature"),
                         hub_response_message(transcript, fields))
    except IntegrityError:
        raise EnrollmentError("renewal response signature does not verify") from None
    cert = x509.load_pem_x509_certificate(str(resp["certificate_pem"]).encode())
    if cert.public_key().public_bytes_raw() != agent.keystore.public_key(IDENTITY_KEY):  # type: ignore[union-attr]
        raise EnrollmentError("renewed certificate is not for this device's key")
    install_transport(agent, transport_key, transport_pem.encode())
    atomic_write(agent.dir / "device.pem", str(resp["certificate_pem"]).encode())


def respond_to_tamper(agent: Agent, reason: str) -> bool:
    """Tamper response: tell the hub (signed, while the identity key still exists), then zeroize.

    Call from the enclosure-open (or any tamper sensor) handler. The key
    store is zeroized whether or not the hub could be told; the session
    keys held in memory are dropped. Returns whether the hub acknowledged.
    """
    reported = False
    try:
        wire, _transcript = agent._signed("tamper_report", {"reason": reason[:128]})
        agent._post("/v1/tamper", wire)
        reported = True
    except (httpx.HTTPError, IotGuardError) as exc:
        log.error("%s: tamper report not delivered (%s); zeroizing anyway", agent.device_id, exc)
    if isinstance(agent.keystore, TamperResponsive):
        agent.keystore.tamper_event(reason)
    else:
        agent.keystore.zeroize()
    agent._keys = None
    agent._sealer = None
    return reported
