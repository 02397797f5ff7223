"""Software secure element: a ``KeyStore`` in one sealed file, with tamper response.

The store keeps its keys and counters in a CBOR map sealed at rest with
AES-256-GCM under a key-encryption key (KEK). The KEK is derived from two
secrets:

* a 32-byte **root secret** created with the store, kept in the store
  directory (``root.secret``, mode 0600), and
* a **device binding** that lives *outside* the store directory: either
  supplied by the platform (``device_binding=``, e.g. read from a hardware
  fuse or a TPM-sealed blob) or, by default, ``/etc/machine-id`` mixed with a
  per-install secret kept under ``$XDG_STATE_HOME/iotguard`` (see
  :func:`platform_device_binding`).

Copying the store directory to another device therefore yields a store that
does not open there (cloned-device attack). A store whose sealed file fails
its integrity check — altered, truncated, copied from another device, or
missing its root secret — is treated as tampered: the store crypto-erases
what is left (root secret and sealed file), persists a tamper record
(``tamper.cbor``) and refuses every key operation with
:class:`~iotguard.errors.TamperError`. An enclosure-open signal handler
calls :meth:`SoftwareKeyStore.tamper_event` for the same response.

Every change is written atomically (temporary file, fsync, rename), so a
crash leaves either the old or the new state. Loaded key objects are cached
in memory so signing costs what a bare signature costs. Processes sharing a
store change it under a lock on ``keystore.lock`` after re-reading the sealed
file, and look a missing key up again on disk: none loses another's keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotguard.clock import Clock, SystemClock
from iotguard.errors import ConfigError, IntegrityError, KeyStoreError, TamperError
from iotguard.fileio import atomic_write, create_exclusive
from iotguard.keys.keystore import KeyKind, TamperRecord
from iotguard.keys.software_entries import _Entry, _load_entry, _new_secret

__all__ = [
    "DEVICE_SECRET_ENV",
    "MIN_DEVICE_BINDING_BYTES",
    "SoftwareKeyStore",
    "default_device_secret_path",
    "platform_device_binding",
]

_FORMAT = 2
_STORE_FILE = "keystore.sealed"
_ROOT_FILE = "root.secret"
_TAMPER_FILE = "tamper.cbor"
_LOCK_FILE = "keystore.lock"
_AD = b"iotguard-software-keystore-v2"
_MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))

#: Environment variable naming the per-install device secret file.
DEVICE_SECRET_ENV = "IOTGUARD_DEVICE_SECRET"  # noqa: S105 - a variable name, not a secret
#: Shortest device binding accepted (bytes); shorter values are guessable.
MIN_DEVICE_BINDING_BYTES = 16
#: Largest sealed store or tamper record read from disk (bytes).
MAX_STORE_BYTES = 16 * 1024 * 1024


def default_device_secret_path() -> Path:
    """Where the per-install device secret lives by default.

    ``$IOTGUARD_DEVICE_SECRET`` if set, else
    ``$XDG_STATE_HOME/iotguard/device.secret`` (``~/.local/state`` when
    ``XDG_STATE_HOME`` is unset).
    """
    env = os.environ.get(DEVICE_SECRET_ENV)
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "iotguard" / "device.secret"


def platform_device_binding(device_secret_path: str | os.PathLike[str] | None = None) -> bytes:
    """The default device binding: machine id mixed with a per-install secret.

    The machine id stands in for a hardware identity fuse; the per-install
    secret (32 random bytes, created on first use with mode 0600) makes the
    binding unguessable even when the machine id is known.

    Args:
        device_secret_path: Per-install secret file; defaults to
            :func:`default_device_secret_path`.

    Raises:
        ConfigError: the per-install secret cannot be read or created.
        KeyStoreError: the per-install secret exists but is malformed.
    """
    path = Path(device_secret_path) if device_secret_path is not None else default_device_secret_path()
    try:
        if not path.exists():
            create_exclusive(path, secrets.token_bytes(32))
        secret = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the per-install device secret {str(path)!r} ({exc.strerror}); "
            f"set {DEVICE_SECRET_ENV} or pass device_binding"
        ) from None
    if len(secret) != 32:
        raise KeyStoreError("per-install device secret has the wrong length")
    machine_id = b""
    for candidate in _MACHINE_ID_FILES:
        try:
            machine_id = candidate.read_bytes().strip()
        except OSError:
            continue
        if machine_id:
            break
    return hashlib.sha256(b"iotguard device binding v1\0" + machine_id + b"\0" + secret).digest()


class SoftwareKeyStore:
    """A software secure element backed by a directory.

    Tamper state: :attr:`tamper_record` (``None`` while trustworthy) is what
    the agent reports; :meth:`require_untampered` raises; every key operation
    raises :class:`~iotguard.errors.TamperError` once tampered.

    Args:
        directory: Where the sealed store, its root secret and a tamper
            record live. Created (mode 0700) if missing.
        device_binding: Device-unique secret (at least
            :data:`MIN_DEVICE_BINDING_BYTES`) mixed into the KEK; must come
            from outside ``directory`` (hardware fuse, TPM, platform
            keyring). ``None`` uses :func:`platform_device_binding`.
        device_secret_path: Per-install secret file used when
            ``device_binding`` is ``None``; must not be inside ``directory``.
        clock: Source of tamper timestamps (system clock if ``None``).

    Raises:
        ConfigError: the binding is too short, or the per-install secret
            would sit inside the store directory (a copy would carry it).
        KeyStoreError: the store is readable but in an unsupported format.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        device_binding: bytes | None = None,
        device_secret_path: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._keys: dict[str, _Entry] = {}
        self._counters: dict[str, int] = {}
        self._pcrs: dict[int, bytes] = {}
        self._tamper: TamperRecord | None = None
        self._loaded: _Signature | None = None
        if device_binding is None:
            path = (
                Path(device_secret_path) if device_secret_path is not None else default_device_secret_path()
            )
            if path.resolve().is_relative_to(self._dir.resolve()):
                raise ConfigError("the device secret must live outside the key-store directory")
            device_binding = platform_device_binding(path)
        if len(device_binding) < MIN_DEVICE_BINDING_BYTES:
            raise ConfigError(f"device binding must be at least {MIN_DEVICE_BINDING_BYTES} bytes")
        self._binding = hashlib.sha256(b"iotguard binding\0" + device_binding).digest()
        self._kek = b""
        self._open()

    def __repr__(self) -> str:
        state = "tampered" if self._tamper is not None else "ok"
        return f"SoftwareKeyStore({str(self._dir)!r}, keys={sorted(self._keys)}, state={state})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a key store cannot be pickled or copied")

    # -- tamper response -----------------------------------------------------

    @property
    def tamper_record(self) -> TamperRecord | None:
        """The persisted tamper record, or ``None`` while the store is trustworthy."""
        return self._tamper

    def require_untampered(self) -> None:
        """Raise if the store was tampered with.

        Raises:
            TamperError: the store responded to a tamper event.
        """
        record = self._tamper
        if record is not None:
            raise TamperError(f"key store was tampered with ({record.reason}) and is zeroized")

    def tamper_event(self, reason: str, *, now: datetime | None = None) -> TamperRecord:
        """Respond to tampering: zeroize, persist a record, refuse all further use.

        Call this from the enclosure-open (or any tamper sensor) handler.
        Idempotent: a second event returns the first record.

        Args:
            reason: Stable reason code, e.g. ``"enclosure_open"``.
            now: Time of the event (the store's clock if ``None``).

        Returns:
            The persisted record.
        """
        with self._lock:
            if self._tamper is not None:
                return self._tamper
            return self._respond(reason, "tamper sensor", now)

    def _respond(self, reason: str, detail: str, now: datetime | None = None) -> TamperRecord:
        record = TamperRecord(reason=reason, detected_at=now or self._clock.now(), detail=detail)
        # The record goes to disk first: a crash half-way through the erase
        # must still leave a store that refuses to work.
        payload = {"reason": record.reason, "at": record.detected_at.isoformat(), "detail": record.detail}
        atomic_write(self._dir / _TAMPER_FILE, cbor2.dumps(payload, canonical=True))
        self._tamper = record
        self._keys.clear()
        self._counters.clear()
        self._pcrs.clear()
        self._kek = b""
        root = self._dir / _ROOT_FILE
        if root.exists():
            atomic_write(root, bytes(32))
            root.unlink()
        (self._dir / _STORE_FILE).unlink(missing_ok=True)
        (self._dir / _LOCK_FILE).unlink(missing_ok=True)
        return record

    def _check(self) -> None:
        if self._tamper is not None:
            self.require_untampered()

    # -- persistence ---------------------------------------------------------

    def _derive_kek(self, root: bytes) -> bytes:
        hkdf = HKDF(hashes.SHA256(), 32, salt=b"iotguard keystore kek v2", info=b"kek")
        return hkdf.derive(root + self._binding)

    def _open(self) -> None:
        tamper_path = self._dir / _TAMPER_FILE
        if tamper_path.exists():
            self._tamper = _read_tamper_record(tamper_path)
            return
        root_path = self._dir / _ROOT_FILE
        store_path = self._dir / _STORE_FILE
        if not root_path.exists() and not store_path.exists():
            root = secrets.token_bytes(32)
            self._kek = self._derive_kek(root)
            atomic_write(root_path, root)
            self._save()
            return
        if not root_path.exists():
            self._respond("root_secret_missing", "sealed store present without its root secret")
            return
        if not store_path.exists():
            self._respond("sealed_store_missing", "root secret present without its sealed store")
            return
        root = root_path.read_bytes()
        blob, signature = _read_store(store_path)
        if len(root) != 32 or not 28 <= len(blob) <= MAX_STORE_BYTES:
            self._respond("integrity_check_failed", "root secret or sealed store has the wrong size")
            return
        kek = self._derive_kek(root)
        try:
            raw = AESGCM(kek).decrypt(blob[:12], blob[12:], _AD)
        except InvalidTag:
            self._respond(
                "integrity_check_failed",
                "sealed store did not authenticate (altered, or copied from another device)",
            )
            return
        self._kek = kek
        self._load_state(raw, signature)

    def _load_state(self, raw: bytes, signature: _Signature) -> None:
        state: dict[str, Any] = cbor2.loads(raw)
        if state.get("v") != _FORMAT:
            raise KeyStoreError("unsupported key store format")
        self._keys = {str(k): _load_entry(KeyKind(v[0]), bytes(v[1])) for k, v in state["keys"].items()}
        self._counters = {str(k): int(v) for k, v in state["counters"].items()}
        self._pcrs = {int(k): bytes(v) for k, v in state.get("pcrs", {}).items()}
        # The signature of the bytes just read, not of whatever the path names now: a file
        # another process wrote after the read must look changed at the next refresh.
        self._loaded = signature

    def _file_signature(self) -> _Signature | None:
        try:
            with open(self._dir / _STORE_FILE, "rb") as f:
                return _signature(os.fstat(f.fileno()), f.read(12))
        except FileNotFoundError:
            return None

    def _refresh(self) -> None:
        """Re-read the sealed file if another process (or instance) changed it since this one last did."""
        if self._tamper is not None or not self._kek or self._file_signature() == self._loaded:
            return
        tamper_path = self._dir / _TAMPER_FILE
        if tamper_path.exists():  # another process responded to tampering
            self._tamper, self._kek = _read_tamper_record(tamper_path), b""
            self._keys, self._counters, self._pcrs = {}, {}, {}
            return
        try:
            blob, signature = _read_store(self._dir / _STORE_FILE)
        except FileNotFoundError:
            self._respond("sealed_store_missing", "sealed store removed while in use")
            return
        if not 28 <= len(blob) <= MAX_STORE_BYTES:
            self._respond("integrity_check_failed", "sealed store has the wrong size")
            return
        try:
            raw = AESGCM(self._kek).decrypt(blob[:12], blob[12:], _AD)
        except InvalidTag:
            self._respond("integrity_check_failed", "sealed store did not authenticate (altered)")
            return
        self._load_state(raw, signature)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This process's lock, then the store directory's lock across processes, on the latest state."""
        with self._lock:
            self._check()
            fd = os.open(self._dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._refresh()
                yield
            finally:
                os.close(fd)

    def _save(self) -> None:
        state = {
            "v": _FORMAT,
            "keys": {k: [e.kind.value, e.secret_bytes()] for k, e in self._keys.items()},
            "counters": self._counters,
            "pcrs": self._pcrs,
        }
        nonce = secrets.token_bytes(12)
        sealed = nonce + AESGCM(self._kek).encrypt(nonce, cbor2.dumps(state, canonical=True), _AD)
        atomic_write(self._dir / _STORE_FILE, sealed)
        self._loaded = self._file_signature()

    def _get(self, label: str, kind: KeyKind) -> _Entry:
        with self._lock:
            self._check()
            self._refresh()  # another process may have created or destroyed it
            self._check()
            entry = self._keys.get(label)
        if entry is None:
            raise KeyStoreError(f"no key {label!r}")
        if entry.kind is not kind:
            raise KeyStoreError(f"key {label!r} is {entry.kind.value}, not {kind.value}")
        return entry

    # -- KeyStore ------------------------------------------------------------

    def generate(self, label: str, kind: KeyKind) -> bytes:
        """Create a key under ``label`` and return its public key (b"" for AES); raises as :meth:`generate_many`."""
        return self.generate_many([label], kind)[0]

    def generate_many(self, labels: Sequence[str], kind: KeyKind) -> list[bytes]:
        """Create a key under each of ``labels``, all or none, in one write of the sealed file (the file
        holds every key, so a write per key would cost O(keys) each); returns their public keys.

        Raises:
            KeyStoreError: a label exists already or is repeated.
            TamperError: the store was tampered with.
        """
        kind = KeyKind(kind)
        with self._exclusive():
            self._check()
            taken = [label for label in labels if label in self._keys]
            if taken or len(set(labels)) != len(labels):
                raise KeyStoreError(f"key {(taken or list(labels))[0]!r} exists or is repeated")
            made = {label: _load_entry(kind, _new_secret(kind)) for label in labels}
            self._keys.update(made)
            try:
                self._save()
            except BaseException:
                for label in made:
                    del self._keys[label]
                raise
            return [e.public for e in made.values()]

    def has_key(self, label: str) -> bool:
        """Whether a key named ``label`` exists.

        Raises:
            TamperError: the store was tampered with.
        """
        with self._lock:
            self._check()
            self._refresh()
            self._check()
            return label in self._keys

    def public_key(self, label: str) -> bytes:
        """Raw public key bytes of an asymmetric key.

        Raises:
            KeyStoreError: no such key, or it is symmetric.
            TamperError: the store was tampered with.
        """
        with self._lock:
            self._check()
            entry = self._keys.get(label)
        if entry is None:
            raise KeyStoreError(f"no key {label!r}")
        if entry.kind is KeyKind.AES256:
            raise KeyStoreError(f"key {label!r} is symmetric and has no public key")
        return entry.public

    def sign(self, label: str, message: bytes) -> bytes:
        """Sign ``message`` with an Ed25519 key; returns the 64-byte signature.

        Raises:
            KeyStoreError: no such Ed25519 key.
            TamperError: the store was tampered with.
        """
        key = self._get(label, KeyKind.ED25519).key
        assert isinstance(key, Ed25519PrivateKey)
        return key.sign(message)

    def derive(self, label: str, peer_public_key: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
        """X25519 agreement with ``peer_public_key`` then HKDF-SHA256.

        Raises:
            KeyStoreError: no such X25519 key, or a bad peer key.
            TamperError: the store was tampered with.
        """
        key = self._get(label, KeyKind.X25519).key
        assert isinstance(key, X25519PrivateKey)
        try:
            shared = key.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
        except ValueError as exc:
            raise KeyStoreError(f"key agreement failed: {exc}") from None
        return HKDF(hashes.SHA256(), length, salt=salt, info=info).derive(shared)

    def seal(self, label: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt under the AES key ``label``; returns nonce || ciphertext || tag.

        Raises:
            KeyStoreError: no such AES key.
            TamperError: the store was tampered with.
        """
        key = self._get(label, KeyKind.AES256).key
        assert isinstance(key, AESGCM)
        nonce = secrets.token_bytes(12)
        return nonce + key.encrypt(nonce, plaintext, associated_data)

    def unseal(self, label: str, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Reverse :meth:`seal`.

        Raises:
            IntegrityError: the blob or associated data was altered.
            KeyStoreError: no such AES key.
            TamperError: the store was tampered with.
        """
        key = self._get(label, KeyKind.AES256).key
        assert isinstance(key, AESGCM)
        if len(sealed) < 28:
            raise IntegrityError("sealed blob is truncated")
        try:
            return key.decrypt(sealed[:12], sealed[12:], associated_data)
        except InvalidTag:
            raise IntegrityError("sealed blob failed authentication") from None

    def counter(self, name: str) -> int:
        """Current value of a persistent monotonic counter (0 if never used).

        Raises:
            TamperError: the store was tampered with.
        """
        with self._lock:
            self._check()
            return self._counters.get(name, 0)

    def advance_counter(self, name: str, to_at_least: int) -> int:
        """Raise counter ``name`` to at least ``to_at_least``, durably; returns the new value.

        Raises:
            TamperError: the store was tampered with.
        """
        with self._exclusive():
            self._check()
            current = self._counters.get(name, 0)
            if to_at_least <= current:
                return current
            self._counters[name] = int(to_at_least)
            try:
                self._save()
            except BaseException:
                self._counters[name] = current
                raise
            return int(to_at_least)

    def delete(self, label: str) -> None:
        """Destroy one key (crypto-erase: the sealed file is rewritten without it).

        Raises:
            TamperError: the store was tampered with.
        """
        with self._exclusive():
            self._check()
            if self._keys.pop(label, None) is not None:
                self._save()

    def zeroize(self) -> None:
        """Destroy every key (decommissioning); counters survive.

        Raises:
            TamperError: the store was tampered with (its keys are already gone).
        """
        with self._exclusive():
            self._check()
            self._keys.clear()
            self._save()


    def _read_registers(self) -> dict[int, bytes]:
        """PCR bank of the emulated root of trust (see ``software_rot``); unset PCRs are absent."""
        with self._lock:
            self._check()
            return dict(self._pcrs)

    def _write_registers(self, pcrs: dict[int, bytes]) -> None:
        """Persist the emulated PCR bank in the sealed store."""
        with self._exclusive():
            self._check()
            previous = self._pcrs
            self._pcrs = dict(pcrs)
            try:
                self._save()
            except BaseException:
                self._pcrs = previous
                raise


#: What identifies one version of the sealed file: inode, mtime, size and the blob's random nonce
#: (a rewrite can reuse the inode, keep the size and land within one mtime tick; never the nonce).
_Signature = tuple[int, int, int, bytes]


def _signature(st: os.stat_result, head: bytes) -> _Signature:
    return (st.st_ino, st.st_mtime_ns, st.st_size, head[:12])


def _read_store(path: Path) -> tuple[bytes, _Signature]:
    """The sealed file's bytes and their signature, from one open file (never two versions mixed)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        blob = f.read(MAX_STORE_BYTES + 1)
    return blob, _signature(st, blob)


def _read_tamper_record(path: Path) -> TamperRecord:
    try:
        raw = path.read_bytes()
        if len(raw) > MAX_STORE_BYTES:
            raise ValueError("tamper record too large")
        data = cbor2.loads(raw)
        return TamperRecord(
            reason=str(data["reason"]),
            detected_at=datetime.fromisoformat(str(data["at"])),
            detail=str(data.get("detail", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, cbor2.CBORDecodeError):
        return TamperRecord(
            reason="tamper_record_unreadable",
            detected_at=datetime.fromtimestamp(path.stat().st_mtime, tz=UTC),
            detail="tamper record present but unreadable",
        )
