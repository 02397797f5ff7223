"""The TUF metadata fuzz target: untrusted metadata through the agent's update client.

A fixed firmware repository (:func:`repository_files`: fixed keys, a fixed
clock, expiries a century away, one published release of ``thermo``) is
served to :class:`~iotguard.agent.firmware.FirmwareUpdateClient` by a
:class:`~iotguard.agent.firmware.TransportFetcher`, exactly as in
``tests/updates``; one role's file is replaced by the fuzzer's bytes and the
client runs :meth:`~iotguard.agent.firmware.FirmwareUpdateClient.fetch_release`
(ngclient's refresh, ``Metadata.from_bytes``, signature, version, expiry and
length checks, the delegated model role, the release's custom field, the
image download). The agent must answer with an ``IotGuardError``
(``UpdateRefused`` / ``RollbackError``) or succeed; anything else escaping is
a finding.

Input: first byte = role (low 3 bits: root, timestamp, snapshot, targets,
model) and mode (bit 7: re-sign). Raw mode serves the bytes as they are
(reaches parsing and signature checks). Re-sign mode parses them with
``Metadata.from_bytes`` and signs them with the role's real key, so mutated
*signed* metadata reaches the checks behind the signatures (a mutated
snapshot also gets a timestamp naming its hash, length and version).
Bytes that do not parse in re-sign mode, or cannot be signed, are skipped:
the raw mode covers them.
"""

from __future__ import annotations

import atexit
import hashlib
import re
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.exceptions import FormatError
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Timestamp
from tuf.api.serialization.json import JSONSerializer

from iotguard.agent.firmware import FirmwareUpdateClient, TransportFetcher
from iotguard.updates import FirmwareRelease, FirmwareRepository
from iotguard.updates.repository import ExpiryPolicy

BASE_URL = "https://hub.test/firmware"
MODEL = "thermo"
#: The release the client fetches (version 1 is the factory image).
VERSION = 2
ROLES = ("root", "timestamp", "snapshot", "targets", MODEL)
#: A fixed clock and expiries far beyond it: the committed seeds stay valid.
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
_CENTURY = timedelta(days=36500)
EXPIRY = ExpiryPolicy(root=_CENTURY, targets=_CENTURY, model=_CENTURY, snapshot=_CENTURY, timestamp=_CENTURY)
_SERIALIZER = JSONSerializer(compact=True)


def _signer(n: int) -> CryptoSigner:
    return CryptoSigner(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


ROOT_SIGNERS = [_signer(1), _signer(2), _signer(3)]
TARGETS_SIGNER = _signer(4)
ONLINE_SIGNER = _signer(5)
MODEL_SIGNER = _signer(6)


def _role_signers(role: str) -> list[Signer]:
    return {"root": list(ROOT_SIGNERS), "timestamp": [ONLINE_SIGNER], "snapshot": [ONLINE_SIGNER],
            "targets": [TARGETS_SIGNER], MODEL: [MODEL_SIGNER]}[role]


def image(version: int) -> bytes:
    header = f"{MODEL} firmware {version}\n".encode()
    return header + hashlib.shake_256(header).digest(512 - len(header))


@cache
def repository_files() -> dict[str, bytes]:
    """The repository the hub serves (deterministic: same bytes on every call and machine)."""
    repo = FirmwareRepository.create(root_signers=ROOT_SIGNERS, root_threshold=2, targets_signer=TARGETS_SIGNER,
                                     online_signer=ONLINE_SIGNER, now=NOW, expiry=EXPIRY)
    repo.add_model(MODEL, model_signer=MODEL_SIGNER, targets_signer=TARGETS_SIGNER, online_signer=ONLINE_SIGNER,
                   now=NOW)
    data = image(VERSION)
    release = FirmwareRelease.for_image(MODEL, VERSION, data, end_of_support=datetime(2031, 12, 31).date(),
                                        disclosure_contact="https://example.org/security",
                                        measurements={"app": hashlib.sha256(data).hexdigest()})
    repo.publish(release, data, model_signer=MODEL_SIGNER, online_signer=ONLINE_SIGNER, now=NOW)
    # A second root (rotation with the same keys), so root seeds are what a client fetches as N.root.json.
    repo.rotate_root(old_signers=ROOT_SIGNERS, new_signers=ROOT_SIGNERS, new_threshold=2, now=NOW)
    return dict(repo.files())


def newest(files: dict[str, bytes], role: str) -> str:
    if role == "timestamp":
        return "metadata/timestamp.json"
    pattern = re.compile(rf"metadata/(\d+)\.{re.escape(role)}\.json")
    return max((p for p in files if pattern.fullmatch(p)), key=lambda p: int(pattern.fullmatch(p)[1]))  # type: ignore[index]


def seeds() -> dict[str, bytes]:
    """Each role's served metadata, as raw-mode and re-sign-mode inputs."""
    files = repository_files()
    out: dict[str, bytes] = {}
    for i, role in enumerate(ROLES):
        body = files[newest(files, role)]
        out[f"{role}_raw"] = bytes((i,)) + body
        out[f"{role}_resign"] = bytes((0x80 | i,)) + body
    return out


def _resign(role: str, data: bytes, served: dict[str, bytes]) -> bool:
    """Serve ``data`` re-signed with ``role``'s key (a snapshot with a matching timestamp); False: skip."""
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
        md.signatures.clear()
        for signer in _role_signers(role):
            md.sign(signer, append=True, signed_serializer=None)
        body = md.to_bytes(_SERIALIZER)
        if role == "snapshot":
            version = md.signed.version
            served[f"metadata/{version}.snapshot.json"] = body
            ts: Metadata[Timestamp] = Metadata.from_bytes(served["metadata/timestamp.json"])
            ts.signed.snapshot_meta.version = version
            ts.signed.snapshot_meta.length = len(body)
            ts.signed.snapshot_meta.hashes = {"sha256": hashlib.sha256(body).hexdigest()}
            ts.sign(ONLINE_SIGNER)
            served["metadata/timestamp.json"] = ts.to_bytes(_SERIALIZER)
            return True
    except (RepositoryError, FormatError, ValueError, TypeError, AttributeError):
        return False
    served[newest(served, role)] = body
    return True


class _Device:
    """A device's data directory, reset to the trusted root before each input."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="iotguard-fuzz-tuf-"))
        atexit.register(shutil.rmtree, self.dir, True)
        self.served: dict[str, bytes] = {}
        self.counters: dict[str, int] = {}

    def transport(self, url: str) -> bytes | None:
        return self.served.get(url[len(BASE_URL) + 1:])

    def counter(self, name: str) -> int:
        return self.counters.get(name, 0)

    def advance_counter(self, name: str, to_at_least: int) -> int:
        self.counters[name] = max(self.counter(name), to_at_least)
        return self.counters[name]

    def client(self) -> FirmwareUpdateClient:
        shutil.rmtree(self.dir / "firmware", ignore_errors=True)
        self.counters.clear()
        FirmwareUpdateClient.trust(self.dir, repository_files()["metadata/1.root.json"])
        return FirmwareUpdateClient(self.dir, model=MODEL, counters=self, fetcher=TransportFetcher(self.transport),
                                    base_url=BASE_URL, self_test=lambda _slot, _image: None)


@cache
def _device() -> _Device:
    return _Device()


def tuf_metadata(data: bytes) -> None:
    """Serve ``data`` as one role's metadata and fetch the release through the agent's update client."""
    if not data:
        return
    role, resign, body = ROLES[(data[0] & 0x07) % len(ROLES)], bool(data[0] & 0x80), data[1:]
    device = _device()
    device.served = dict(repository_files())
    if resign:
        if not _resign(role, body, device.served):
            return
    else:
        device.served[newest(device.served, role)] = body
    device.client().fetch_release(VERSION)
