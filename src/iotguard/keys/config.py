"""Choosing a key-store backend by configuration.

The hub (CA and fleet signing keys) and the agent (device identity) each
hold a :class:`KeyStoreConfig` and call :func:`open_key_store`; nothing else
in iotguard looks at the backend name. Backends:

``software``
    :class:`~iotguard.keys.software.SoftwareKeyStore` in ``directory``;
    ``device_secret_path`` overrides where the per-install device binding
    secret lives (it must be outside ``directory``).
``pkcs11``
    :class:`~iotguard.keys.pkcs11.Pkcs11KeyStore` on ``pkcs11_module`` /
    ``pkcs11_token``; the PIN is read from the environment variable named by
    ``pkcs11_pin_env`` (default ``IOTGUARD_PKCS11_PIN``), never from the file.
``puf-sim``
    :class:`~iotguard.keys.puf.PufKeyStore` over a *simulated* SRAM PUF — for
    the simulator and demos only. The simulated silicon is fixed by
    ``puf_seed`` or, when that is unset, by a seed made at the first start
    and kept in ``<directory>/puf-sim-silicon.cbor`` beside the helper data
    (a real device keeps only the helper data: its silicon is the chip).
    Anyone who reads that seed can simulate the PUF and derive every key, so
    opening this backend logs a loud warning.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2

from iotguard.errors import ConfigError, KeyStoreError
from iotguard.fileio import atomic_write
from iotguard.keys.keystore import KeyStore
from iotguard.keys.pkcs11 import PIN_ENV, Pkcs11KeyStore
from iotguard.keys.puf.keystore import PufKeyStore
from iotguard.keys.puf.sram import SramPuf
from iotguard.keys.software import SoftwareKeyStore

__all__ = ["BACKENDS", "PUF_SIM_SILICON_FILE", "KeyStoreConfig", "open_key_store"]

log = logging.getLogger(__name__)

#: Where the ``puf-sim`` backend keeps the simulated silicon's seed when ``puf_seed`` is unset.
PUF_SIM_SILICON_FILE = "puf-sim-silicon.cbor"


@dataclass
class KeyStoreConfig:
    """Settings of one key store (a config-file section; no secrets in it)."""

    backend: str = "software"
    #: Store directory (software, puf-sim). Empty: the caller's default.
    directory: str = ""
    device_secret_path: str = ""
    pkcs11_module: str = ""
    pkcs11_token: str = ""
    pkcs11_pin_env: str = PIN_ENV
    label_prefix: str = "iotguard/"
    #: Manufacturing seed of the simulated PUF (puf-sim only; -1 = a seed made
    #: at the first start and kept in ``<directory>/puf-sim-silicon.cbor``).
    puf_seed: int = -1


def _directory(config: KeyStoreConfig, default: str | os.PathLike[str] | None) -> Path:
    if config.directory:
        return Path(config.directory)
    if default is None:
        raise ConfigError(f"key store backend {config.backend!r} needs a directory")
    return Path(default)


def _software(config: KeyStoreConfig, default: str | os.PathLike[str] | None) -> KeyStore:
    return SoftwareKeyStore(_directory(config, default), device_secret_path=config.device_secret_path or None)


def _pkcs11(config: KeyStoreConfig, default: str | os.PathLike[str] | None) -> KeyStore:
    return Pkcs11KeyStore.from_env(
        config.pkcs11_module or None,
        config.pkcs11_token or None,
        pin_env=config.pkcs11_pin_env,
        label_prefix=config.label_prefix,
    )


def _simulated_silicon(directory: Path) -> int:
    """The simulated PUF's manufacturing seed, made once per device directory."""
    path = directory / PUF_SIM_SILICON_FILE
    if not path.exists():
        atomic_write(path, cbor2.dumps({"v": 1, "seed": secrets.randbits(63)}, canonical=True))
    raw = path.read_bytes()
    try:
        if len(raw) > 64:
            raise ValueError("file too large")
        obj = cbor2.loads(raw)
        if not isinstance(obj, dict) or set(obj) != {"v", "seed"} or obj["v"] != 1:
            raise ValueError("unknown format")
        seed = obj["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError("seed out of range")
    except (ValueError, cbor2.CBORDecodeError) as exc:
        raise KeyStoreError(f"simulated PUF silicon file {str(path)!r} is malformed: {exc}") from None
    return seed


def _puf_sim(config: KeyStoreConfig, default: str | os.PathLike[str] | None) -> KeyStore:
    directory = _directory(config, default)
    if config.puf_seed >= 0:
        seed, where = config.puf_seed, "the configuration (puf_seed)"
    else:
        seed, where = _simulated_silicon(directory), str(directory / PUF_SIM_SILICON_FILE)
    log.warning("UNSAFE: key store backend puf-sim: a simulated PUF whose silicon seed is in %s; "
                "whoever reads it can derive this device's keys (simulation and demos only)", where)
    return PufKeyStore(SramPuf.manufacture(seed=seed), directory)


#: Backend name to factory ``(config, default_directory) -> KeyStore``.
BACKENDS: dict[str, Callable[[KeyStoreConfig, str | os.PathLike[str] | None], KeyStore]] = {
    "software": _software,
    "pkcs11": _pkcs11,
    "puf-sim": _puf_sim,
}


def open_key_store(
    config: KeyStoreConfig, *, default_directory: str | os.PathLike[str] | None = None
) -> KeyStore:
    """Open the key store ``config`` describes.

    Args:
        config: The settings.
        default_directory: Directory used when ``config.directory`` is empty.

    Raises:
        ConfigError: unknown backend or a missing setting.
        KeyStoreError: the backend cannot be opened.
    """
    factory = BACKENDS.get(config.backend)
    if factory is None:
        raise ConfigError(f"unknown key store backend {config.backend!r} (one of {sorted(BACKENDS)})")
    return factory(config, default_directory)
