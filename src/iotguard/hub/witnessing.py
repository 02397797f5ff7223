"""The hub's witnesses: a checkpoint is final only with k of n cosignatures (C2SP tlog-witness).

Configured by ``hub.witnesses_file`` (JSON, below) and ``hub.witness_quorum``.
After each new checkpoint the hub's checkpoint schedule asks every witness to
cosign it (:func:`iotguard.audit.witness_protocol.collect_cosignatures`, over
HTTPS). With ``quorum`` valid cosignatures the note is stored as **final**
(``GET /v1/audit/checkpoint/final``) and only then anchored; with fewer, it is
not final, nothing is anchored, an ``log.checkpoint_not_final`` audit event
names each witness's reason, and the next tick tries again. A witness that
refuses because it already cosigned another root for the same size (a split
view) is recorded as ``log.split_view_reported`` and logged as an error.

The witnesses file::

    [{"url": "https://witness.example:8443", "key": "<vkey>", "ca": "/path/witness-cert.pem"}]

``ca`` (optional) pins the witness's TLS certificate; without it the system
trust store is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from iotguard.audit import AuditEvent, NoteVerifier, TransparencyLog
from iotguard.audit.monitor import AlertKind
from iotguard.audit.witness_protocol import QuorumNotMet, WitnessEndpoint, collect_cosignatures
from iotguard.clock import Clock
from iotguard.config import HubConfig
from iotguard.errors import ConfigError, IotGuardError

__all__ = ["CheckpointFinality", "finality_from_config", "load_witnesses"]

log = logging.getLogger(__name__)

_MAX_FILE = 64 * 1024


class CheckpointFinality:
    """Makes checkpoints final with k of n witness cosignatures.

    Args:
        log: The hub's audit log (its checkpoints; final notes are stored in it).
        witnesses: The configured witnesses.
        quorum: Cosignatures a final checkpoint needs (1..n).
        clock: Time of the audit events.
    """

    def __init__(self, log: TransparencyLog, witnesses: Sequence[WitnessEndpoint], quorum: int,
                 clock: Clock) -> None:
        if not 1 <= quorum <= len(witnesses):
            raise ConfigError(f"hub.witness_quorum must be between 1 and the {len(witnesses)} configured witnesses")
        self._log = log
        self._witnesses = list(witnesses)
        self._quorum = quorum
        self._clock = clock
        #: Last size each witness is known to have cosigned (a hint for consistency proofs).
        self._sizes: dict[str, int] = {}

    @property
    def quorum(self) -> int:
        return self._quorum

    def __call__(self, checkpoint: str) -> str | None:
        """The checkpoint with its cosignatures if the quorum cosigned it (and stored as final), else None."""
        size = int(checkpoint.split("\n", 2)[1])
        done = self._log.store.final(size)
        if done is not None:
            return done
        try:
            result = collect_cosignatures(checkpoint, self._log.verifier, self._witnesses, self._quorum, self._sizes)
        except QuorumNotMet as exc:
            self._report(checkpoint, size, [(o.witness, o.reason) for o in exc.outcomes if not o.ok])
            return None
        except IotGuardError as exc:  # the checkpoint itself did not verify: never final
            log.error("checkpoint %d cannot be made final: %s", size, exc.code)
            return None
        self._log.save_final_checkpoint(result.note)
        return result.note

    def _report(self, checkpoint: str, size: int, refusals: list[tuple[str, str]]) -> None:
        now = self._clock.now()
        events = [AuditEvent("log.checkpoint_not_final", now, "hub.witnessing", self._log.origin,
                             {"size": size, "quorum": self._quorum,
                              "refusals": [{"witness": w, "reason": r} for w, r in refusals]})]
        split = [w for w, r in refusals if r == AlertKind.SPLIT_VIEW]
        if split:
            log.error("witnesses %s report a split view of this log at size %d", ", ".join(split), size)
            events.append(AuditEvent("log.split_view_reported", now, "hub.witnessing", self._log.origin,
                                     {"size": size, "witnesses": split, "checkpoint": checkpoint}))
        else:
            log.warning("checkpoint %d is not final: %d of %d witnesses refused", size, len(refusals),
                        len(self._witnesses))
        self._log.append(events)


def load_witnesses(path: str) -> list[tuple[str, NoteVerifier, str | None]]:
    """Read the witnesses file: ``(url, cosignature key, pinned certificate or None)`` per witness.

    Raises:
        ConfigError: unreadable, too large, not the documented JSON, a non-https URL or a bad key.
    """
    p = Path(path)
    try:
        if p.stat().st_size > _MAX_FILE:
            raise ConfigError(f"hub.witnesses_file {path}: larger than {_MAX_FILE} bytes")
        raw = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"hub.witnesses_file {path}: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise ConfigError("hub.witnesses_file: expected a non-empty JSON list of witnesses")
    out: list[tuple[str, NoteVerifier, str | None]] = []
    for i, w in enumerate(raw):
        if not isinstance(w, dict) or set(w) - {"url", "key", "ca"} or not isinstance(w.get("url"), str) \
                or not isinstance(w.get("key"), str) or not isinstance(w.get("ca", ""), str):
            raise ConfigError(f"hub.witnesses_file: witness {i} must be {{url, key[, ca]}} strings")
        if not w["url"].startswith("https://"):
            raise ConfigError(f"hub.witnesses_file: witness {i} url must be https://")
        try:
            key = NoteVerifier.from_vkey(w["key"])
        except IotGuardError as exc:
            raise ConfigError(f"hub.witnesses_file: witness {i} key: {exc}") from None
        out.append((w["url"], key, w.get("ca") or None))
    if len({k.name for _u, k, _c in out}) != len(out):
        raise ConfigError("hub.witnesses_file: two witnesses share a key name")
    return out


def finality_from_config(cfg: HubConfig, log_: TransparencyLog, clock: Clock) -> CheckpointFinality | None:
    """The hub's :class:`CheckpointFinality`, or None when no witnesses are configured.

    Raises:
        ConfigError: a bad witnesses file, or a quorum outside 1..n.
    """
    if not cfg.witnesses_file:
        if cfg.witness_quorum:
            raise ConfigError("hub.witness_quorum needs hub.witnesses_file")
        return None
    from iotguard.hub.witness_server import HttpWitness

    endpoints = [HttpWitness(url, key, log_.consistency_proof, ca_file=ca)
                 for url, key, ca in load_witnesses(cfg.witnesses_file)]
    return CheckpointFinality(log_, endpoints, cfg.witness_quorum or len(endpoints), clock)
