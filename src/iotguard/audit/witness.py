"""An independent witness: cosigns a checkpoint only if it extends what it saw.

A witness keeps, per log origin, the largest checkpoint it has cosigned. It
cosigns a new checkpoint (C2SP ``cosignature/v1``) only after verifying the
log's signature and a consistency proof from that stored checkpoint, so a
log that shows different histories to different clients (a split view) or
rolls back cannot collect cosignatures for both. Clients that require a
quorum of witness cosignatures are therefore protected from forks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from iotguard.audit.merkle import verify_consistency
from iotguard.audit.note import SIG_COSIGNATURE_V1, NoteSigner, NoteVerifier, add_signatures, open_checkpoint
from iotguard.errors import ProofError, RollbackError

__all__ = ["TreeHead", "Witness", "WitnessStateStore", "verify_cosigned"]


@dataclass(frozen=True)
class TreeHead:
    """The size and root of the last checkpoint a witness cosigned for a log."""

    size: int
    root: bytes


class WitnessStateStore(Protocol):
    """Durable per-origin witness state (a file in ``hub.audit_store``)."""

    def load(self, origin: str) -> TreeHead | None:
        """The stored head for ``origin``, if any."""
        ...

    def save(self, origin: str, head: TreeHead) -> None:
        """Durably store the new head before any cosignature is released."""
        ...


class Witness:
    """Verifies and cosigns checkpoints of known logs.

    Args:
        signer: The witness's key (a :class:`NoteSigner` of type
            :data:`~iotguard.audit.note.SIG_COSIGNATURE_V1`).
        logs: Verifier keys of the logs this witness follows.
        state: Where the last cosigned head of each log is kept.

    Raises:
        ProofError: the signer is not a cosignature key.
    """

    def __init__(self, signer: NoteSigner, logs: Sequence[NoteVerifier], state: WitnessStateStore) -> None:
        if signer.verifier.sig_type != SIG_COSIGNATURE_V1:
            raise ProofError("a witness signs cosignature/v1")
        self._signer = signer
        self._logs = {v.name: v for v in logs}
        self._state = state

    @property
    def verifier(self) -> NoteVerifier:
        """The witness's cosignature verifier key."""
        return self._signer.verifier

    def cosign(self, checkpoint: str, proof: Sequence[bytes], now: datetime) -> str:
        """Verify a checkpoint against the last one seen and cosign it.

        Args:
            checkpoint: The log's signed checkpoint note.
            proof: Consistency proof from the last cosigned size of this log
                (empty on first contact, or when the size did not change).
            now: Cosigning time (goes into the cosignature).

        Returns:
            The checkpoint note with the witness's cosignature line added.

        Raises:
            ProofError: unknown log, bad signature, or a fork (same size with
                another root, or no valid consistency proof).
            RollbackError: the checkpoint is older than the last one cosigned.
        """
        origin = _origin(checkpoint)
        log_key = self._logs.get(origin)
        if log_key is None:
            raise ProofError(f"witness does not follow log {origin!r}")
        cp, note = open_checkpoint(checkpoint, log_key)
        last = self._state.load(origin)
        if last is not None:
            if cp.size < last.size:
                raise RollbackError(f"checkpoint size {cp.size} is older than cosigned {last.size}")
            if cp.size == last.size:
                if cp.root != last.root:
                    raise ProofError("fork: another root for an already cosigned size")
            elif last.size > 0:
                verify_consistency(last.size, cp.size, last.root, cp.root, proof)
        self._state.save(origin, TreeHead(cp.size, cp.root))
        return add_signatures(checkpoint, [self._signer.sign(note.text, now)])

    def last_cosigned(self, origin: str) -> TreeHead | None:
        """The last head cosigned for a log."""
        return self._state.load(origin)


def _origin(checkpoint: str) -> str:
    return checkpoint.split("\n", 1)[0]


def verify_cosigned(
    checkpoint: str, log_key: NoteVerifier, witnesses: Sequence[NoteVerifier], quorum: int
) -> list[str]:
    """Check a checkpoint carries the log's signature and ``quorum`` witness cosignatures.

    Returns:
        Names of the witnesses whose cosignatures verified.

    Raises:
        ProofError: the log signature fails, a known witness's cosignature
            fails, or fewer than ``quorum`` witnesses cosigned.
    """
    if quorum < 1:
        raise ProofError("a cosignature policy needs a quorum of at least one")
    _, note = open_checkpoint(checkpoint, log_key)
    names: list[str] = []
    for sig in note.signatures:
        for w in witnesses:
            if w.matches(sig):
                w.verify(note.text, sig)
                if w.name not in names:
                    names.append(w.name)
    if len(names) < quorum:
        raise ProofError(f"only {len(names)} of {quorum} required witness cosignatures")
    return names
