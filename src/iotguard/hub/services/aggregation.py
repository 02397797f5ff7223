"""Secure-aggregation rounds coordinated by the hub over the device plane.

An operator starts a round (:meth:`SecureAggregationService.start`); the
invited devices take part with signed ``aggregate`` requests that the device
plane has authenticated and Cedar has allowed (:meth:`device_step`), and the
operator reads the sum when the round is done (:meth:`status`). The
coordinator (:class:`~iotguard.analytics.secagg_round.RoundCoordinator`)
holds public keys, sealed share boxes, masked vectors and unmasking shares,
never a device's value.

Rounds live in this hub process's memory (they last minutes; a device that
reaches another hub process gets ``round_unknown``). Every refused device
message is an audit event with its reason code.
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

from iotguard.analytics.he_round import HeRound, HeRoundSpec
from iotguard.analytics.homomorphic import KeyShare, PaillierPublicKey
from iotguard.analytics.secagg import AggregationError
from iotguard.analytics.secagg_round import RoundCoordinator, RoundSpec, encode_message, new_round_id
from iotguard.audit import AuditEvent, AuditSink
from iotguard.clock import Clock
from iotguard.errors import ConfigError, IotGuardError, MalformedError
from iotguard.identity import VerifiedRequest

__all__ = ["MAX_ROUNDS", "SecureAggregationService"]

#: Rounds held at once (finished ones are forgotten oldest first).
MAX_ROUNDS = 32
_ROUND_ID = re.compile(r"[0-9a-f]{32}")


class SecureAggregationService:
    """Starts rounds, answers devices' round steps, reports sums.

    Args:
        audit: Where round starts, results and refusals are recorded.
        clock: Time source (phase deadlines).
    """

    def __init__(self, audit: AuditSink, clock: Clock) -> None:
        self.audit = audit
        self.clock = clock
        self._rounds: dict[str, RoundCoordinator | HeRound] = {}
        self._lock = threading.Lock()

    def start(self, devices: list[str], dims: int, *, degree: int = 0, threshold: int = 0,
              phase_timeout_s: float = 300.0, actor: str) -> str:
        """Start a round among ``devices``; returns its id.

        Raises:
            MalformedError: bad parameters, or too many rounds running.
        """
        spec = RoundSpec(tuple(sorted(devices)), dims, degree, threshold, timedelta(seconds=phase_timeout_s))
        try:
            spec.validate()
            if not 1 <= phase_timeout_s <= 86400:
                raise ConfigError("phase timeout must be 1 s .. 1 day")
        except ConfigError as exc:
            raise MalformedError(f"round refused: {exc}") from None
        now = self.clock.now()
        rid = self._add(lambda rid: RoundCoordinator(rid, spec, now))
        self.audit.record(AuditEvent("aggregate.round_started", now, actor, "aggregate",
                                     {"round": rid, "kind": "secure", "devices": len(devices), "dims": dims,
                                      "degree": degree}))
        return rid

    def start_he(self, devices: list[str], dims: int, *, n: int, value_bits: int, max_summands: int,
                 hub_share: int, timeout_s: float = 300.0, actor: str) -> str:
        """Start a homomorphic-sum round under a dealer's public key; the hub keeps its key share only.

        Raises:
            MalformedError: bad parameters or key, or too many rounds running.
        """
        pk = PaillierPublicKey(n, value_bits, max_summands)
        spec = HeRoundSpec(tuple(sorted(devices)), dims, pk, KeyShare("hub", n, hub_share),
                           timedelta(seconds=timeout_s))
        try:
            spec.validate()
            if not 1 <= timeout_s <= 86400:
                raise ConfigError("timeout must be 1 s .. 1 day")
        except ConfigError as exc:
            raise MalformedError(f"round refused: {exc}") from None
        now = self.clock.now()
        rid = self._add(lambda _rid: HeRound(spec, now))
        self.audit.record(AuditEvent("aggregate.round_started", now, actor, "aggregate",
                                     {"round": rid, "kind": "he", "devices": len(devices), "dims": dims}))
        return rid

    def _add(self, make: Any) -> str:
        rid = new_round_id()
        with self._lock:
            running = [k for k, r in self._rounds.items() if r.phase not in ("done", "failed")]
            if len(running) >= MAX_ROUNDS:
                raise MalformedError("too many aggregation rounds running")
            for k in [k for k in self._rounds if k not in running][: max(0, len(self._rounds) + 1 - MAX_ROUNDS)]:
                del self._rounds[k]
            self._rounds[rid.hex()] = make(rid)
        return rid.hex()

    def phases(self) -> dict[str, int]:
        """Rounds this process holds, by phase (``/metrics``)."""
        with self._lock:
            return dict(Counter(r.phase for r in self._rounds.values()))

    def _round(self, round_id: str) -> RoundCoordinator | HeRound:
        r = self._rounds.get(round_id) if _ROUND_ID.fullmatch(round_id) else None
        if r is None:
            raise AggregationError("round_unknown", round_id[:32])
        return r

    def device_step(self, req: VerifiedRequest) -> dict[str, Any]:
        """One step of a device in a round (the device plane has authenticated and authorized it).

        Returns the round's phase and, for a poll, the step's message (base64url canonical CBOR).

        Raises:
            AggregationError: the step is refused (``reason`` names why; audited).
        """
        now = self.clock.now()
        body = req.body
        step, message = str(body["step"]), bytes(body["message"])
        try:
            with self._lock:
                r = self._round(str(body["round"]))
                if isinstance(r, HeRound):
                    return self._he_step(r, req.device_id, step, message, now)
                if step == "poll":
                    if message:
                        raise AggregationError("message_malformed", "a poll carries no message")
                    reply = r.poll(req.device_id, now)
                    return {"phase": reply["phase"],
                            "message": base64.urlsafe_b64encode(encode_message(reply)).decode()}
                handlers = {"advertise": r.advertise, "shares": r.submit_boxes, "masked": r.submit_masked,
                            "unmask": r.submit_unmask}
                if step not in handlers:
                    raise AggregationError("message_malformed", f"unknown step {step[:16]!r}")
                handlers[step](req.device_id, message, now)
                return {"phase": r.phase, "accepted": True}
        except AggregationError as exc:
            self._refused(req.device_id, str(body["round"])[:32], step[:16], exc)
            raise

    @staticmethod
    def _he_step(r: HeRound, device_id: str, step: str, message: bytes, now: Any) -> dict[str, Any]:
        if step == "he_poll" and not message:
            reply = r.poll(device_id, now)
            return {"phase": reply["phase"], "message": base64.urlsafe_b64encode(encode_message(reply)).decode()}
        if step == "he_submit":
            r.submit(device_id, message, now)
            return {"phase": r.phase, "accepted": True}
        raise AggregationError("message_malformed", f"step {step[:16]!r} is not one of an HE round")

    def _refused(self, device_id: str, round_id: str, step: str, exc: AggregationError) -> None:
        # The refusal stands even when its audit record cannot be written.
        with contextlib.suppress(IotGuardError):
            self.audit.record(AuditEvent("aggregate.refused", self.clock.now(), device_id, device_id,
                                         {"round": round_id, "step": step, "reason": exc.reason}))

    def status(self, round_id: str, *, actor: str) -> dict[str, Any]:
        """A round's phase, membership counts and (when done) the sum.

        Raises:
            AggregationError: ``round_unknown``.
        """
        with self._lock:
            r = self._round(round_id)
            r.tick(self.clock.now())
            out = r.result()
        if out["phase"] in ("done", "failed"):
            self.audit.record(AuditEvent("aggregate.round_result", self.clock.now(), actor, "aggregate",
                                         {"round": round_id, "phase": out["phase"],
                                          "survivors": out.get("survivors", 0), "reason": out.get("reason", "")}))
        return {"round": round_id, **out}
