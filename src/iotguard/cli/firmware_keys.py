"""Offline TUF keys (root, targets, per-model release keys) in a directory.

These keys never enter the hub: ``iotguard firmware keys init DIR`` creates
them on the release manager's machine (or a removable medium), each private
key as PKCS#8 PEM encrypted with a passphrase the operator supplies (there is
no default), files mode 0600. :func:`load_offline_signers` reads them back as
python-tuf signers for the operations that need them (root rotation,
delegating a model, signing a release).

This module does file I/O on purpose: it is the edge where offline keys live.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner

from iotguard.errors import ConfigError
from iotguard.fileio import atomic_write, create_exclusive
from iotguard.updates.release import MODEL_PATTERN

__all__ = [
    "MIN_PASSPHRASE",
    "OfflineKeys",
    "create_model_key",
    "init_offline_keys",
    "load_model_signer",
    "load_offline_signers",
]

#: Shortest passphrase accepted for offline keys.
MIN_PASSPHRASE = 12
_MAX_ROOT_KEYS = 16


@dataclass(frozen=True)
class OfflineKeys:
    """The offline signers read back from a key directory."""

    root: list[CryptoSigner]
    root_threshold: int
    targets: CryptoSigner


def _check_passphrase(passphrase: bytes) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise ConfigError(f"offline key passphrase must be at least {MIN_PASSPHRASE} bytes")


def _write_key(path: Path, passphrase: bytes) -> str:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    if not create_exclusive(path, pem):
        raise ConfigError(f"{path} exists already; offline keys are never overwritten")
    return CryptoSigner(key).public_key.keyid


def init_offline_keys(directory: Path, *, root_keys: int, threshold: int, passphrase: bytes) -> dict[str, object]:
    """Create ``root_keys`` root keys (``threshold`` of them must sign) and a targets key.

    Returns the public description written to ``keys.json``.

    Raises:
        ConfigError: bad counts, weak passphrase, or keys exist already.
    """
    _check_passphrase(passphrase)
    if not 1 <= threshold <= root_keys <= _MAX_ROOT_KEYS:
        raise ConfigError(f"need 1 <= threshold <= root keys <= {_MAX_ROOT_KEYS}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (directory / "keys.json").exists():
        raise ConfigError(f"{directory} already holds offline keys")
    root_ids = [_write_key(directory / f"root-{i + 1}.pem", passphrase) for i in range(root_keys)]
    targets_id = _write_key(directory / "targets.pem", passphrase)
    description: dict[str, object] = {"root": root_ids, "root_threshold": threshold, "targets": targets_id}
    atomic_write(directory / "keys.json", json.dumps(description, indent=2).encode())
    return description


def _read_key(path: Path, passphrase: bytes) -> CryptoSigner:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read offline key {path.name}: wrong passphrase or damaged file") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"offline key {path.name} is not Ed25519")
    return CryptoSigner(key)


def load_offline_signers(directory: Path, passphrase: bytes) -> OfflineKeys:
    """Read the offline signers written by :func:`init_offline_keys`.

    Raises:
        ConfigError: missing or damaged files, wrong passphrase, or key ids
            that disagree with ``keys.json``.
    """
    try:
        description = json.loads((directory / "keys.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{directory} holds no offline key description") from exc
    root = [_read_key(directory / f"root-{i + 1}.pem", passphrase) for i in range(len(description["root"]))]
    targets = _read_key(directory / "targets.pem", passphrase)
    if [s.public_key.keyid for s in root] != description["root"] or targets.public_key.keyid != description["targets"]:
        raise ConfigError("offline keys do not match keys.json")
    return OfflineKeys(root=root, root_threshold=int(description["root_threshold"]), targets=targets)


def create_model_key(directory: Path, model: str, passphrase: bytes) -> CryptoSigner:
    """Create ``model``'s offline release key (``model-<model>.pem``) and return its signer.

    Raises:
        ConfigError: weak passphrase, bad model name, or the key exists already.
    """
    _check_passphrase(passphrase)
    if not MODEL_PATTERN.fullmatch(model):
        raise ConfigError(f"bad model name {model!r}")
    _write_key(directory / f"model-{model}.pem", passphrase)
    return _read_key(directory / f"model-{model}.pem", passphrase)


def load_model_signer(directory: Path, model: str, passphrase: bytes) -> CryptoSigner:
    """Read ``model``'s offline release key.

    Raises:
        ConfigError: bad model name, missing file or wrong passphrase.
    """
    if not MODEL_PATTERN.fullmatch(model):
        raise ConfigError(f"bad model name {model!r}")
    return _read_key(directory / f"model-{model}.pem", passphrase)
