"""C2SP signed notes, checkpoints and witness cosignatures.

* signed-note (https://c2sp.org/signed-note): UTF-8 text, a blank line,
  then one line per signature ``— <key name> <base64(key id || sig)>``.
  Key id = ``SHA-256(name || 0x0A || type || public key)[:4]``; Ed25519
  notes use type ``0x01`` and sign the text itself.
* tlog-checkpoint (https://c2sp.org/tlog-checkpoint): the note text is the
  origin line, the decimal tree size and the base64 root hash, optionally
  followed by extension lines.
* tlog-cosignature (https://c2sp.org/tlog-cosignature), Ed25519
  ``cosignature/v1`` (type ``0x04``): a witness signs
  ``"cosignature/v1\\ntime <t>\\n" || checkpoint text`` and the signature
  line carries ``key id || u64 timestamp || sig``.

Parsing is strict and bounded; a note that fails any check raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotguard.errors import MalformedError, ProofError
from iotguard.keys.keystore import KeyStore

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "Checkpoint",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "add_signatures",
    "key_id",
    "open_checkpoint",
    "open_note",
    "parse_note",
    "sign_checkpoint",
]

#: Signature type byte of an Ed25519 note signature.
SIG_ED25519 = 0x01
#: Signature type byte of an Ed25519 ``cosignature/v1`` witness cosignature.
SIG_COSIGNATURE_V1 = 0x04
#: Largest note accepted, signatures included.
MAX_NOTE_BYTES = 64 * 1024
#: Most signature lines accepted on one note (the Go reference caps at 100).
MAX_SIGNATURES = 100
#: Most extension lines accepted on a checkpoint.
MAX_CHECKPOINT_EXTENSIONS = 16

_DASH = "\u2014 "
_NAME_RE = re.compile(r"^[^\s+]+$")
_SIZE_RE = re.compile(r"^(0|[1-9][0-9]{0,19})$")


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """The 4-byte key id: ``SHA-256(name || 0x0A || type || public key)[:4]``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def _check_name(name: str) -> None:
    if not name or not _NAME_RE.match(name):
        raise MalformedError("key name must be non-empty without spaces or '+'")


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedError(f"{what} is not valid base64") from None


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note (not yet verified)."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The signature line, without its newline."""
        return f"{_DASH}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}"


@dataclass(frozen=True)
class Note:
    """A parsed note: its text (ending in a newline) and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def to_text(self) -> str:
        """Serialise back to the signed-note wire form."""
        return self.text + "\n" + "".join(s.line() + "\n" for s in self.signatures)


def parse_note(data: str) -> Note:
    """Parse a signed note without verifying any signature.

    Raises:
        MalformedError: the note is too large or not in signed-note form.
    """
    if len(data.encode()) > MAX_NOTE_BYTES:
        raise MalformedError("note is too large")
    split = data.rfind("\n\n")
    if split < 0:
        raise MalformedError("note has no signature block")
    text, block = data[: split + 1], data[split + 2 :]
    if any(ord(c) < 0x20 and c != "\n" for c in data):
        raise MalformedError("note contains control characters")
    if not block.endswith("\n"):
        raise MalformedError("signature block must end with a newline")
    lines = block[:-1].split("\n")
    if not lines or len(lines) > MAX_SIGNATURES:
        raise MalformedError("note has no or too many signatures")
    sigs: list[NoteSignature] = []
    for line in lines:
        if not line.startswith(_DASH):
            raise MalformedError("malformed signature line")
        parts = line[len(_DASH) :].split(" ")
        if len(parts) != 2:
            raise MalformedError("malformed signature line")
        _check_name(parts[0])
        raw = _b64decode(parts[1], "signature")
        if len(raw) < 5:
            raise MalformedError("signature is too short")
        sigs.append(NoteSignature(parts[0], raw[:4], raw[4:]))
    return Note(text, tuple(sigs))


@dataclass(frozen=True)
class NoteVerifier:
    """A verifier key: a name, a signature type and an Ed25519 public key.

    Its text form (a *vkey*) is ``<name>+<hex key id>+<base64(type || key)>``.
    """

    name: str
    sig_type: int
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.sig_type not in (SIG_ED25519, SIG_COSIGNATURE_V1):
            raise MalformedError("unsupported signature type")
        if len(self.public_key) != 32:
            raise MalformedError("Ed25519 public keys are 32 bytes")

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id this key's signature lines carry."""
        return key_id(self.name, self.sig_type, self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse a vkey string.

        Raises:
            MalformedError: the string is not a well-formed vkey or its key
                id does not match its key.
        """
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise MalformedError("verifier key must be name+keyid+key")
        raw = _b64decode(parts[2], "verifier key")
        if not raw:
            raise MalformedError("verifier key is empty")
        verifier = cls(parts[0], raw[0], raw[1:])
        if verifier.key_id.hex() != parts[1]:
            raise MalformedError("verifier key id does not match its key")
        return verifier

    def vkey(self) -> str:
        """This verifier as a vkey string."""
        material = base64.b64encode(bytes([self.sig_type]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def matches(self, sig: NoteSignature) -> bool:
        """Whether a signature line claims to be from this key."""
        return sig.name == self.name and sig.key_id == self.key_id

    def verify(self, text: str, sig: NoteSignature) -> int | None:
        """Verify one matching signature over ``text``.

        Returns:
            The cosignature timestamp for ``cosignature/v1`` keys, else None.

        Raises:
            ProofError: the signature does not verify.
        """
        timestamp: int | None = None
        message = text.encode()
        signature = sig.signature
        if self.sig_type == SIG_COSIGNATURE_V1:
            if len(signature) != 8 + 64:
                raise ProofError("cosignature has the wrong length")
            (timestamp,) = struct.unpack(">Q", signature[:8])
            if timestamp >= 1 << 63:
                raise ProofError("cosignature timestamp out of range")
            message = f"cosignature/v1\ntime {timestamp}\n".encode() + message
            signature = signature[8:]
        elif len(signature) != 64:
            raise ProofError("signature has the wrong length")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            raise ProofError(f"signature by {self.name} does not verify") from None
        return timestamp


class NoteSigner:
    """Signs notes (or cosigns checkpoints) with an Ed25519 key held in a KeyStore.

    Args:
        keystore: Where the private key lives; it never leaves.
        label: The key's label in ``keystore``.
        name: The key name (for a log: its origin; for a witness: its name).
        sig_type: :data:`SIG_ED25519` for log signatures,
            :data:`SIG_COSIGNATURE_V1` for witness cosignatures.

    Raises:
        KeyStoreError: the key does not exist.
    """

    def __init__(self, keystore: KeyStore, label: str, name: str, sig_type: int = SIG_ED25519) -> None:
        self._keystore = keystore
        self._label = label
        self.verifier = NoteVerifier(name, sig_type, keystore.public_key(label))

    @property
    def name(self) -> str:
        """The key name on the signature lines."""
        return self.verifier.name

    def sign(self, text: str, now: datetime | None = None) -> NoteSignature:
        """Sign ``text`` (cosignatures need ``now``, the cosigning time).

        Raises:
            MalformedError: ``text`` is not note text, or a cosignature is
                requested without a time.
        """
        if not text.endswith("\n") or "\n\n" in text:
            raise MalformedError("note text must end in one newline and have no blank line")
        message = text.encode()
        prefix = b""
        if self.verifier.sig_type == SIG_COSIGNATURE_V1:
            if now is None:
                raise MalformedError("a cosignature needs the cosigning time")
            ts = int(now.timestamp())
            prefix = struct.pack(">Q", ts)
            message = f"cosignature/v1\ntime {ts}\n".encode() + message
        sig = self._keystore.sign(self._label, message)
        return NoteSignature(self.name, self.verifier.key_id, prefix + sig)


def open_note(data: str, verifiers: Sequence[NoteVerifier]) -> tuple[Note, list[NoteVerifier]]:
    """Parse a note and verify the signatures of the known keys.

    Lines from unknown keys are ignored; a failing line from a known key
    rejects the whole note (as the signed-note spec requires).

    Returns:
        The note and the verifiers whose signatures verified (at least one).

    Raises:
        MalformedError: the note does not parse.
        ProofError: no known key signed it, or a known key's signature fails.
    """
    note = parse_note(data)
    verified: list[NoteVerifier] = []
    for sig in note.signatures:
        for v in verifiers:
            if v.matches(sig):
                v.verify(note.text, sig)
                if v not in verified:
                    verified.append(v)
    if not verified:
        raise ProofError("note is not signed by any known key")
    return note, verified


def add_signatures(data: str, signatures: Iterable[NoteSignature]) -> str:
    """Append signature lines to a note, skipping lines it already carries.

    Raises:
        MalformedError: the note does not parse.
    """
    note = parse_note(data)
    sigs = list(note.signatures)
    for s in signatures:
        if s not in sigs:
            sigs.append(s)
    return Note(note.text, tuple(sigs)).to_text()


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head's content: origin, tree size, root hash, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The checkpoint note text."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_body(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text strictly.

        Raises:
            MalformedError: not a well-formed checkpoint body.
        """
        if not text.endswith("\n"):
            raise MalformedError("checkpoint must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or len(lines) > 3 + MAX_CHECKPOINT_EXTENSIONS:
            raise MalformedError("checkpoint has the wrong number of lines")
        origin, size_line, root_line, *ext = lines
        if not origin or not _SIZE_RE.match(size_line):
            raise MalformedError("malformed checkpoint origin or size")
        size = int(size_line)
        if size >= 1 << 64:
            raise MalformedError("checkpoint size out of range")
        root = _b64decode(root_line, "root hash")
        if len(root) != 32:
            raise MalformedError("checkpoint root is not a SHA-256 hash")
        if any(not line for line in ext):
            raise MalformedError("empty checkpoint extension line")
        return cls(origin, size, root, tuple(ext))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """Sign a checkpoint; returns the signed note text.

    Raises:
        MalformedError: the signer's name is not the checkpoint origin.
    """
    if signer.name != checkpoint.origin:
        raise MalformedError("a log signs checkpoints under its origin name")
    body = checkpoint.body()
    return Note(body, (signer.sign(body),)).to_text()


def open_checkpoint(data: str, log_key: NoteVerifier) -> tuple[Checkpoint, Note]:
    """Verify a checkpoint note against the log's verifier key.

    Raises:
        MalformedError: the note or its checkpoint body does not parse.
        ProofError: the log's signature is missing or invalid, or the origin
            is not the log key's name.
    """
    note, _ = open_note(data, [log_key])
    checkpoint = Checkpoint.from_body(note.text)
    if checkpoint.origin != log_key.name:
        raise ProofError("checkpoint origin does not match the log key")
    return checkpoint, note
