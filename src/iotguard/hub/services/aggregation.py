"""Secure-aggregation rounds coordinated by the hub over the device plane.

An operator starts a round (:meth:`SecureAggregationService.start`); the
invited devices take part with signed ``aggregate`` requests that the device
plane has authenticated and Cedar has allowed (:meth:`device_step`), and the
operator reads the sum when the round is done (:meth:`status`). The
coordinator (:class:`~iotguard.analytics.secagg_round.RoundCoordinator`)
holds public keys, sealed share boxes, masked vectors and unmasking shares,
never a device's value.

Rounds live in a :class:`~iotguard.hub.stores.aggregation_rounds.RoundStore`
(ADR 0414): the round's spec and the log of the steps it accepted. Each step
replays what this process has not seen yet through the (deterministic)
coordinator, applies the device's message, and logs it, all under the
store's hold on the round; so two hub processes over one database run one
round, and a restarted hub resumes a round mid-way. A process keeps its
replayed coordinators as a cache only. The hub key share of an HE round is
stored sealed under the key store's ``aggregation-he-share`` key. Every
refused device message is an audit event with its reason code.
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import cbor2

from iotguard.analytics.he_round import HeRound, HeRoundSpec
from iotguard.analytics.rlwe import RlweKeyShare, RlweParams, RlwePublicKey, keygen_share, public_key_from_parts
from iotguard.analytics.secagg import AggregationError
from iotguard.analytics.secagg_round import RoundCoordinator, RoundSpec, encode_message, new_round_id
from iotguard.audit import AuditEvent, AuditSink
from iotguard.clock import Clock
from iotguard.errors import ConfigError, IotGuardError, MalformedError
from iotguard.hub.stores.aggregation_rounds import RoundStore, RoundTx, StoredRound
from iotguard.hub.stores.aggregation_rounds_memory import MemoryRoundStore
from iotguard.identity import VerifiedRequest
from iotguard.keys.keystore import KeyKind, KeyStore

__all__ = ["HE_SHARE_KEY_LABEL", "MAX_ROUNDS", "SecureAggregationService"]

#: Rounds running at once (the store keeps this many finished ones too, newest first).
MAX_ROUNDS = 32
#: Key-store label of the key sealing HE rounds' hub key shares in the round store.
HE_SHARE_KEY_LABEL = "aggregation-he-share"
_ROUND_ID = re.compile(r"[0-9a-f]{32}")
_DEVICE_STEPS = ("advertise", "shares", "masked", "unmask")
_Round = RoundCoordinator | HeRound
_T = TypeVar("_T")


def _apply(r: _Round, kind: str, device_id: str, message: bytes, at: datetime) -> None:
    """One logged step, live or replayed (the same calls in the same order give the same state)."""
    if kind == "tick":
        r.tick(at)
    elif isinstance(r, HeRound):
        if kind != "he_submit":
            raise AggregationError("message_malformed", f"step {kind[:16]!r} is not one of an HE round")
        r.submit(device_id, message, at)
    elif kind in _DEVICE_STEPS:
        {"advertise": r.advertise, "shares": r.submit_boxes, "masked": r.submit_masked,
         "unmask": r.submit_unmask}[kind](device_id, message, at)
    else:
        raise AggregationError("message_malformed", f"unknown step {kind[:16]!r}")


class SecureAggregationService:
    """Starts rounds, answers devices' round steps, reports sums.

    Args:
        audit: Where round starts, results and refusals are recorded.
        clock: Time source (phase deadlines).
    """

    def __init__(self, audit: AuditSink, clock: Clock, store: RoundStore | None = None,
                 keystore: KeyStore | None = None) -> None:
        self.audit = audit
        self.clock = clock
        self.store: RoundStore = store if store is not None else MemoryRoundStore()
        self.keystore = keystore
        self._live: OrderedDict[str, tuple[int, _Round]] = OrderedDict()  # replayed rounds: a cache only
        self._lock = threading.Lock()

    def start(self, devices: list[str], dims: int, *, degree: int = 0, threshold: int = 0,
              phase_timeout_s: float = 300.0, actor: str, round_id: str = "") -> str:
        """Start a round among ``devices``; returns its id.

        ``round_id`` (32 hex, drawn at random by the caller) starts the round under an id the caller bound
        beforehand (a learning run's version, ADR 1304); a round of that id that exists is left as it is.

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
        if round_id and not _ROUND_ID.fullmatch(round_id):
            raise MalformedError("round refused: a round id is 32 hex digits")
        if round_id and self.store.get(round_id) is not None:
            return round_id
        now = self.clock.now()
        rid = self._add("secure", {"devices": list(spec.devices), "dims": dims, "degree": degree,
                                   "threshold": threshold, "timeout_s": float(phase_timeout_s)}, now,
                        round_id=round_id)
        self.audit.record(AuditEvent("aggregate.round_started", now, actor, "aggregate",
                                     {"round": rid, "kind": "secure", "devices": len(devices), "dims": dims,
                                      "degree": degree}))
        return rid

    def start_he(self, devices: list[str], dims: int, *, seed: bytes, decryptor_part: bytes, value_bits: int,
                 max_summands: int | None = None, min_devices: int = 0, timeout_s: float = 300.0,
                 actor: str) -> str:
        """Start a homomorphic-sum round; the hub generates its own key share for it and keeps it sealed.

        The independent decryptor generated its share for the public polynomial of ``seed`` beforehand
        and gave its public part ``decryptor_part`` (``b`` in the NTT domain, 5 x N little-endian words);
        the round's public key is the sum of both parts. ``value_bits`` bounds each value (devices refuse
        values outside ``[0, 2^value_bits)``), ``max_summands`` (the invited devices unless given) the
        headroom. The sum is decrypted only if at least ``min_devices`` devices sent (0: two thirds of the
        invited, at least 2); otherwise the round fails ``too_few_submissions``.

        Raises:
            MalformedError: bad parameters or key part, or too many rounds running.
        """
        if max_summands is None:
            max_summands = max(2, len(devices))
        params = RlweParams(value_bits, max_summands)
        try:
            params.validate()
            hub_share, hub_part = keygen_share("hub", seed)
            dec = RlwePublicKey.from_bytes(params, seed, decryptor_part)
            pk = public_key_from_parts(params, seed, [hub_part, dec.b_hat])
            spec = HeRoundSpec(tuple(sorted(devices)), dims, pk, hub_share, timedelta(seconds=timeout_s), min_devices)
            spec.validate()
            if not 1 <= timeout_s <= 86400:
                raise ConfigError("timeout must be 1 s .. 1 day")
        except (ConfigError, MalformedError) as exc:
            raise MalformedError(f"round refused: {exc}") from None
        now = self.clock.now()
        rid = self._add("he", {"devices": list(spec.devices), "dims": dims, "seed": seed, "b": pk.b_bytes(),
                               "value_bits": value_bits, "max_summands": max_summands, "min_devices": min_devices,
                               "timeout_s": float(timeout_s)}, now, hub_share=hub_share.to_bytes())
        self.audit.record(AuditEvent("aggregate.round_started", now, actor, "aggregate",
                                     {"round": rid, "kind": "he", "devices": len(devices), "dims": dims}))
        return rid

    def _add(self, kind: str, spec: dict[str, Any], now: datetime, *, hub_share: bytes | None = None,
             round_id: str = "") -> str:
        rid = round_id or new_round_id().hex()
        if hub_share is not None:
            raw = hub_share
            if self.keystore is not None:
                if not self.keystore.has_key(HE_SHARE_KEY_LABEL):
                    self.keystore.generate(HE_SHARE_KEY_LABEL, KeyKind.AES256)
                raw = self.keystore.seal(HE_SHARE_KEY_LABEL, raw, _share_ad(rid))
            spec = {**spec, "hub_share": raw, "sealed": self.keystore is not None}
        self.store.create(StoredRound(rid, kind, cbor2.dumps(spec, canonical=True), now),
                          "submit" if kind == "he" else "advertise", max_running=MAX_ROUNDS, keep_finished=MAX_ROUNDS)
        return rid

    def phases(self) -> dict[str, int]:
        """Rounds the store holds (every hub process's), by phase (``/metrics``)."""
        return self.store.phases()

    def _build(self, rnd: StoredRound) -> _Round:
        spec = cbor2.loads(rnd.spec)
        timeout = timedelta(seconds=float(spec["timeout_s"]))
        devices = tuple(spec["devices"])
        if rnd.kind == "secure":
            return RoundCoordinator(bytes.fromhex(rnd.round_id),
                                    RoundSpec(devices, spec["dims"], spec["degree"], spec["threshold"], timeout),
                                    rnd.started_at)
        raw = bytes(spec["hub_share"])
        if spec["sealed"]:
            if self.keystore is None:
                raise ConfigError("an HE round's hub key share is sealed: this hub has no key store")
            raw = self.keystore.unseal(HE_SHARE_KEY_LABEL, raw, _share_ad(rnd.round_id))
        pk = RlwePublicKey.from_bytes(RlweParams(spec["value_bits"], spec["max_summands"]), bytes(spec["seed"]),
                                      bytes(spec["b"]))
        return HeRound(HeRoundSpec(devices, spec["dims"], pk, RlweKeyShare.from_bytes("hub", raw), timeout,
                                   int(spec.get("min_devices", 0))), rnd.started_at)

    def _open(self, tx: RoundTx) -> _Round:
        """The round as the log has it: this process's cached replay brought up to date, or a fresh replay."""
        rid = tx.round.round_id
        cached = self._live.pop(rid, None)
        seen, r = cached if cached is not None and cached[0] <= tx.version else (0, self._build(tx.round))
        events = tx.events_after(seen)
        for i, e in enumerate(events):
            try:
                _apply(r, e.kind, e.device_id, e.message, e.at)
            except AggregationError:
                if not isinstance(r, RoundCoordinator):
                    raise
                # A log this version cannot replay (a message of a former format, ADR 0416): the round cannot go
                # on. It fails, and the failure is logged once (nothing follows the unreadable entry but this
                # tick), so the store stops counting it as running.
                r.abandon(e.at, "round_log_unreadable")
                if i == len(events) - 1:
                    tx.append("tick", "", b"", e.at, r.phase)
                break
        return r

    def _run(self, round_id: str, fn: Callable[[_Round, RoundTx, datetime], _T]) -> _T:
        """``fn`` on the round, under the store's hold on it, after logging the phase closings now decides.

        A refusal (:class:`AggregationError` from ``fn``) logs nothing of the step, but the closings stand.
        """
        now = self.clock.now()
        refused: AggregationError | None = None
        with self._lock:
            try:
                with self.store.step(round_id if _ROUND_ID.fullmatch(round_id) else "") as tx:
                    if tx is None:
                        raise AggregationError("round_unknown", round_id[:32])
                    r = self._open(tx)
                    for _ in range(8):  # each tick closes at most one phase
                        before = r.phase
                        r.tick(now)
                        if r.phase == before:
                            break
                        tx.append("tick", "", b"", now, r.phase)
                    try:
                        out = fn(r, tx, now)
                    except AggregationError as exc:
                        refused = exc
                    version = tx.version
            except BaseException:
                self._live.pop(round_id, None)
                raise
            self._live[round_id] = (version, r)
            while len(self._live) > 2 * MAX_ROUNDS:
                self._live.popitem(last=False)
        if refused is not None:
            raise refused
        return out

    def device_step(self, req: VerifiedRequest) -> dict[str, Any]:
        """One step of a device in a round (the device plane has authenticated and authorized it).

        Returns the round's phase and, for a poll, the step's message (base64url canonical CBOR).

        Raises:
            AggregationError: the step is refused (``reason`` names why; audited).
        """
        body = req.body
        step, message = str(body["step"]), bytes(body["message"])

        def one(r: _Round, tx: RoundTx, now: datetime) -> dict[str, Any]:
            if step in ("poll", "he_poll") and step == ("he_poll" if isinstance(r, HeRound) else "poll"):
                if isinstance(r, HeRound):
                    reply = r.poll(req.device_id, now, message)
                elif message:
                    raise AggregationError("message_malformed", "a poll carries no message")
                else:
                    reply = r.poll(req.device_id, now)
                return {"phase": reply["phase"],
                        "message": base64.urlsafe_b64encode(encode_message(reply)).decode()}
            if step not in (("he_submit",) if isinstance(r, HeRound) else _DEVICE_STEPS):
                raise AggregationError("message_malformed", f"step {step[:16]!r} is not one of this round")
            _apply(r, step, req.device_id, message, now)
            tx.append(step, req.device_id, message, now, r.phase)
            return {"phase": r.phase, "accepted": True}

        try:
            return self._run(str(body["round"]), one)
        except AggregationError as exc:
            self._refused(req.device_id, str(body["round"])[:32], step[:16], exc)
            raise

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
        out = self._run(round_id, lambda r, _tx, _now: r.result())
        if out["phase"] in ("done", "failed"):
            self.audit.record(AuditEvent("aggregate.round_result", self.clock.now(), actor, "aggregate",
                                         {"round": round_id, "phase": out["phase"],
                                          "survivors": out.get("survivors", 0), "reason": out.get("reason", "")}))
        return {"round": round_id, **out}


def _share_ad(round_id: str) -> bytes:
    return b"iotguard-he-hub-share|" + round_id.encode()
