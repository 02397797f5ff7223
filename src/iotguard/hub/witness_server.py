"""The tlog-witness protocol over HTTPS: the witness's server and the hub's client.

:func:`make_witness_app` serves ``POST /add-checkpoint`` for a
:class:`~iotguard.audit.witness.Witness` (``iotguard witness run --listen``);
each cosigned note is kept in the witness's state directory and each
split-view alert is appended to ``alerts.jsonl`` there and logged.
:class:`HttpWitness` is how a hub asks such a witness to cosign. TLS uses an
operator-provided certificate or a self-signed one created in the state
directory (:func:`ensure_self_signed_certificate`) that the hub pins.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request, Response

from iotguard.audit.note import NoteVerifier, open_checkpoint
from iotguard.audit.witness import Witness
from iotguard.audit.witness_protocol import (
    ADD_CHECKPOINT_PATH,
    MAX_REQUEST_BYTES,
    encode_add_checkpoint,
    handle_add_checkpoint,
    parse_add_checkpoint,
)
from iotguard.errors import StorageError
from iotguard.fileio import atomic_write

__all__ = ["HttpWitness", "ensure_self_signed_certificate", "latest_cosigned", "make_witness_app"]

_log = logging.getLogger("iotguard.witness")
#: Validity of a self-signed witness certificate.
SELF_SIGNED_VALIDITY = timedelta(days=365)


def _save_cosigned(state: Path, checkpoint: str, line: str) -> None:
    origin = checkpoint.split("\n", 1)[0]
    size = checkpoint.split("\n", 2)[1]
    out = state / "cosigned" / hashlib.sha256(origin.encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    note = (checkpoint + line).encode()
    atomic_write(out / f"{size}.note", note, mode=0o644)
    atomic_write(out / "latest.note", note, mode=0o644)


def make_witness_app(
    witness: Witness,
    logs: Sequence[NoteVerifier],
    state: Path,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """The witness's HTTP application (one route, ``POST /add-checkpoint``)."""
    now = clock or (lambda: datetime.now(tz=UTC))
    app = FastAPI(title="iotguard witness", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(ADD_CHECKPOINT_PATH)
    async def add_checkpoint(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_REQUEST_BYTES):
            return Response("request too large\n", status_code=413, media_type="text/plain")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                return Response("request too large\n", status_code=413, media_type="text/plain")
        answer = handle_add_checkpoint(witness, logs, body, now())
        if answer.alert is not None:
            record = {"time": now().isoformat(), "alert": answer.alert.kind, "message": answer.alert.message,
                      "checkpoint": answer.alert.checkpoint}
            with open(state / "alerts.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            _log.error("ALERT %s: %s", answer.alert.kind, answer.alert.message)
            print(json.dumps({"alert": answer.alert.kind, "message": answer.alert.message}), flush=True)
        if answer.status == 200:
            _save_cosigned(state, parse_add_checkpoint(body).checkpoint, answer.body)
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type)

    return app


def ensure_self_signed_certificate(state: Path, hosts: Sequence[str], now: datetime | None = None) -> tuple[Path, Path]:
    """The witness's TLS certificate and key in ``state`` (created once, P-256, self-signed).

    Returns:
        Paths of the certificate (give it to the hubs that pin it) and the key (mode 0600).
    """
    cert_path, key_path = state / "tls-cert.pem", state / "tls-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    now = now or datetime.now(tz=UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "witness")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    state.mkdir(parents=True, exist_ok=True)
    atomic_write(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        mode=0o600,
    )
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


class HttpWitness:
    """A witness reached over HTTPS (implements ``WitnessEndpoint``).

    Args:
        url: The witness's base URL (``https://...``).
        verifier: The witness's cosignature key.
        consistency_proof: The log's ``consistency_proof(old, new)``.
        ca_file: Certificate (or CA) to trust for this witness; the system
            store when ``None``.
        timeout: Seconds per request.
    """

    def __init__(
        self,
        url: str,
        verifier: NoteVerifier,
        consistency_proof: Callable[[int, int], list[bytes]],
        *,
        ca_file: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._url = url.rstrip("/") + ADD_CHECKPOINT_PATH
        self._verifier = verifier
        self._proof = consistency_proof
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True
        )
        self._timeout = timeout

    @property
    def verifier(self) -> NoteVerifier:
        return self._verifier

    def add_checkpoint(self, checkpoint: str, size_hint: int) -> tuple[int, str]:
        """POST the checkpoint with a consistency proof from ``size_hint``.

        Raises:
            StorageError: the witness could not be reached.
        """
        size = int(checkpoint.split("\n", 2)[1])
        proof = self._proof(size_hint, size) if 0 < size_hint < size else []
        body = encode_add_checkpoint(size_hint, proof, checkpoint)
        try:
            with httpx.Client(verify=self._verify, timeout=self._timeout) as client:
                resp = client.post(self._url, content=body, headers={"Content-Type": "text/plain"})
        except httpx.HTTPError as exc:
            raise StorageError(f"witness unreachable: {type(exc).__name__}") from None
        return resp.status_code, resp.text[:MAX_REQUEST_BYTES]


def latest_cosigned(state: Path, log_key: NoteVerifier) -> str | None:
    """The latest note a witness cosigned for a log, from its state directory."""
    path = state / "cosigned" / hashlib.sha256(log_key.name.encode()).hexdigest()[:16] / "latest.note"
    if not path.exists():
        return None
    note = path.read_text()
    open_checkpoint(note, log_key)
    return note
