"""The C2SP tlog-witness protocol, k-of-n cosigning, and split-view detection.

tlog-witness (https://c2sp.org/tlog-witness): a log (or its operator) sends
``POST /add-checkpoint`` with the body::

    old <size the log believes the witness last cosigned>
    <base64 consistency proof hash>   (zero or more lines)
    <blank line>
    <checkpoint note>

and the witness answers ``200`` with its cosignature line(s), or

* ``400`` malformed request, or a checkpoint smaller than ``old``;
* ``403`` the checkpoint's log signature does not verify;
* ``404`` the witness does not follow this log;
* ``409`` ``old`` is not the size the witness last cosigned (the body,
  ``text/x.tlog.size``, is that size, so the client retries with the right
  proof) -- or the checkpoint has the cosigned size with another root: a
  fork, which the witness also raises as a split-view alert;
* ``422`` the consistency proof does not verify.

A hub treats a checkpoint as final only when :func:`collect_cosignatures`
gathered ``quorum`` valid cosignatures from its configured witnesses. An
auditor that gathers checkpoints from several witnesses runs
:func:`detect_split_view`: two log-signed checkpoints of one size with
different roots are proof that the log showed two histories.

Everything here is given bytes and returns data; the HTTP server and client
are in ``iotguard.hub.witness_server``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from iotguard.audit.monitor import Alert, AlertKind
from iotguard.audit.note import (
    MAX_NOTE_BYTES,
    NoteSignature,
    NoteVerifier,
    add_signatures,
    open_checkpoint,
    parse_note,
)
from iotguard.audit.witness import Witness
from iotguard.errors import IotGuardError, MalformedError, ProofError, RollbackError

__all__ = [
    "ADD_CHECKPOINT_PATH",
    "SIZE_CONTENT_TYPE",
    "AddCheckpointRequest",
    "CosignOutcome",
    "CosignedCheckpoint",
    "QuorumNotMet",
    "WitnessEndpoint",
    "WitnessResponse",
    "collect_cosignatures",
    "detect_split_view",
    "encode_add_checkpoint",
    "handle_add_checkpoint",
    "parse_add_checkpoint",
]

#: Path of the add-checkpoint endpoint.
ADD_CHECKPOINT_PATH = "/add-checkpoint"
#: Content type of a 409 body carrying the witness's latest size.
SIZE_CONTENT_TYPE = "text/x.tlog.size"
#: Most consistency proof lines (a proof of a 2^63 tree has at most 126 hashes).
MAX_PROOF_LINES = 128
#: Largest request body accepted.
MAX_REQUEST_BYTES = MAX_NOTE_BYTES + MAX_PROOF_LINES * 46 + 32
_OLD_RE = re.compile(r"^old (0|[1-9][0-9]{0,19})$")


@dataclass(frozen=True)
class AddCheckpointRequest:
    """A parsed add-checkpoint request."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: str


def encode_add_checkpoint(old_size: int, proof: Sequence[bytes], checkpoint: str) -> bytes:
    """The request body for ``POST /add-checkpoint``."""
    lines = [f"old {old_size}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + checkpoint).encode()


def parse_add_checkpoint(body: bytes) -> AddCheckpointRequest:
    """Parse a request body strictly.

    Raises:
        MalformedError: too large, not UTF-8, or not in the protocol's form.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise MalformedError("add-checkpoint request is too large")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise MalformedError("add-checkpoint request is not UTF-8") from None
    head, sep, checkpoint = text.partition("\n\n")
    if not sep:
        raise MalformedError("add-checkpoint request has no blank line before the checkpoint")
    lines = head.split("\n")
    match = _OLD_RE.match(lines[0])
    if match is None:
        raise MalformedError("add-checkpoint request must start with 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise MalformedError("consistency proof is too long")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedError("consistency proof line is not base64") from None
        if len(h) != 32:
            raise MalformedError("consistency proof hash must be 32 bytes")
        proof.append(h)
    return AddCheckpointRequest(int(match.group(1)), tuple(proof), checkpoint)


@dataclass(frozen=True)
class WitnessResponse:
    """What the witness answers, and the alert it raises (if any)."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    alert: Alert | None = None


def handle_add_checkpoint(
    witness: Witness, logs: Sequence[NoteVerifier], body: bytes, now: datetime
) -> WitnessResponse:
    """Serve one add-checkpoint request (the witness's whole decision).

    Args:
        witness: The witness (its key and durable per-log state).
        logs: Verifier keys of the logs it follows (the same as the witness's).
        body: The raw request body.
        now: Cosigning time.
    """
    try:
        req = parse_add_checkpoint(body)
        origin = req.checkpoint.split("\n", 1)[0]
    except MalformedError as exc:
        return WitnessResponse(400, f"{exc}\n")
    key = next((k for k in logs if k.name == origin), None)
    if key is None:
        return WitnessResponse(404, "unknown log\n")
    try:
        cp, _ = open_checkpoint(req.checkpoint, key)
    except MalformedError as exc:
        return WitnessResponse(400, f"{exc}\n")
    except ProofError:
        return WitnessResponse(403, "log signature does not verify\n")
    last = witness.last_cosigned(origin)
    last_size = last.size if last is not None else 0
    if req.old_size != last_size:
        return WitnessResponse(409, f"{last_size}\n", SIZE_CONTENT_TYPE)
    if cp.size < req.old_size:
        return WitnessResponse(400, "checkpoint is smaller than the old size\n")
    if last is not None and cp.size == last.size and cp.root != last.root:
        alert = Alert(
            AlertKind.SPLIT_VIEW,
            f"log {origin} presented another root for size {cp.size}, which this witness cosigned",
            req.checkpoint,
        )
        return WitnessResponse(409, f"{last_size}\n", SIZE_CONTENT_TYPE, alert)
    if cp.size == req.old_size and req.proof:
        return WitnessResponse(422, "a proof between equal sizes must be empty\n")
    try:
        cosigned = witness.cosign(req.checkpoint, req.proof, now)
    except RollbackError as exc:
        return WitnessResponse(409, f"{last_size}\n{exc}\n", SIZE_CONTENT_TYPE)
    except (ProofError, MalformedError) as exc:
        return WitnessResponse(422, f"consistency proof does not verify: {exc.code}\n")
    line = parse_note(cosigned).signatures[-1].line()
    return WitnessResponse(200, line + "\n")


class WitnessEndpoint(Protocol):
    """A witness the hub asks to cosign (over HTTPS in ``hub.witness_server``)."""

    @property
    def verifier(self) -> NoteVerifier:
        """The witness's cosignature key, as configured by the hub operator."""
        ...

    def add_checkpoint(self, checkpoint: str, size_hint: int) -> tuple[int, str]:
        """Send the checkpoint with a proof from ``size_hint``; return (status, body)."""
        ...


@dataclass(frozen=True)
class CosignOutcome:
    """One witness's answer."""

    witness: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class CosignedCheckpoint:
    """The result of a cosigning round: the note (with what verified) and every witness's outcome."""

    note: str
    cosigners: tuple[str, ...]
    outcomes: tuple[CosignOutcome, ...] = field(default=())

    @property
    def split_view(self) -> bool:
        """A witness refused because it cosigned another root for this size."""
        return any(o.reason == AlertKind.SPLIT_VIEW for o in self.outcomes)


class QuorumNotMet(ProofError):
    """Too few witnesses cosigned; ``outcomes`` says why each one did not (e.g. ``split_view``)."""

    def __init__(self, message: str, outcomes: tuple[CosignOutcome, ...]) -> None:
        super().__init__(message)
        self.outcomes = outcomes

    @property
    def split_view(self) -> bool:
        """A witness refused because it cosigned another root for this size."""
        return any(o.reason == AlertKind.SPLIT_VIEW for o in self.outcomes)


def _parse_cosignature(body: str, text: str, witness: NoteVerifier) -> NoteSignature:
    note = parse_note(text + "\n" + body)
    for sig in note.signatures:
        if witness.matches(sig):
            witness.verify(text, sig)
            return sig
    raise ProofError("witness answered without its cosignature")


def collect_cosignatures(
    checkpoint: str,
    log_key: NoteVerifier,
    witnesses: Sequence[WitnessEndpoint],
    quorum: int,
    known_sizes: dict[str, int],
) -> CosignedCheckpoint:
    """Ask every witness to cosign; the checkpoint is final only with ``quorum`` valid cosignatures.

    Args:
        checkpoint: The log's signed checkpoint.
        log_key: The log's verifier key.
        witnesses: The configured witnesses.
        quorum: How many must cosign (k of n).
        known_sizes: Last size each witness (by name) is known to have
            cosigned; updated in place from answers, including 409s.

    Returns:
        The note with every verified cosignature added.

    Raises:
        QuorumNotMet: fewer than ``quorum`` witnesses cosigned: not final.
        ProofError: the checkpoint itself does not verify, or a bad quorum.
    """
    if not 1 <= quorum <= len(witnesses):
        raise ProofError("quorum must be between 1 and the number of witnesses")
    cp, note = open_checkpoint(checkpoint, log_key)
    sigs: list[NoteSignature] = []
    names: list[str] = []
    outcomes: list[CosignOutcome] = []
    for w in witnesses:
        name = w.verifier.name
        try:
            status, body = w.add_checkpoint(checkpoint, known_sizes.get(name, 0))
            if status == 409 and body.split("\n", 1)[0].isdigit():
                witness_size = int(body.split("\n", 1)[0])
                known_sizes[name] = witness_size
                if witness_size <= cp.size:
                    status, body = w.add_checkpoint(checkpoint, witness_size)
                if status == 409 and witness_size == cp.size:
                    # It cosigned this very size and still refuses: another root.
                    outcomes.append(CosignOutcome(name, False, AlertKind.SPLIT_VIEW))
                    continue
            if status != 200:
                outcomes.append(CosignOutcome(name, False, f"http_{status}"))
                continue
            sigs.append(_parse_cosignature(body, note.text, w.verifier))
            known_sizes[name] = cp.size
            names.append(name)
            outcomes.append(CosignOutcome(name, True, "cosigned"))
        except IotGuardError as exc:
            outcomes.append(CosignOutcome(name, False, exc.code))
    if len(names) < quorum:
        raise QuorumNotMet(
            f"only {len(names)} of {quorum} required witnesses cosigned; checkpoint is not final", tuple(outcomes)
        )
    return CosignedCheckpoint(add_signatures(checkpoint, sigs), tuple(names), tuple(outcomes))


def detect_split_view(checkpoints: Sequence[str], log_key: NoteVerifier) -> list[Alert]:
    """Compare checkpoints gathered from different witnesses or clients.

    Two validly log-signed checkpoints of one size with different roots are
    proof the log presented two histories. Checkpoints that do not carry the
    log's signature are ignored (they prove nothing about the log).
    """
    by_size: dict[int, tuple[bytes, str]] = {}
    alerts: list[Alert] = []
    for note in checkpoints:
        try:
            cp, _ = open_checkpoint(note, log_key)
        except (MalformedError, ProofError):
            continue
        seen = by_size.setdefault(cp.size, (cp.root, note))
        if seen[0] != cp.root:
            alerts.append(
                Alert(AlertKind.SPLIT_VIEW, f"two roots for size {cp.size} of {cp.origin}", seen[1] + "\n" + note)
            )
    return alerts
