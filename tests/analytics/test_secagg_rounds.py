"""Secure-aggregation rounds over the device plane: signed ``aggregate`` requests, Cedar-decided; the hub
never holds a device's value (instrumented), the sum is exact with a third dropped, and malformed or
forged shares are refused with a reason."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import numpy as np
import pytest

from iotguard.agent.secagg import AGGREGATE_PATH, RoundClient
from iotguard.analytics.secagg import AggregationError
from iotguard.analytics.secagg_round import RoundCoordinator
from iotguard.clock import Clock
from iotguard.errors import EnrollmentError
from iotguard.identity import VerifiedRequest
from tests.hub.conftest import HubParts

N, DIMS = 9, 32


class Later:
    """A clock ``by`` ahead of another (a phase deadline passes without waiting)."""

    def __init__(self, clock: Clock, by: timedelta) -> None:
        self.clock, self.by = clock, by

    def now(self) -> datetime:
        return self.clock.now() + self.by

    def monotonic(self) -> float:
        return self.clock.monotonic() + self.by.total_seconds()


def _round(hub: HubParts, *, degree: int = 0) -> tuple[str, dict[str, RoundClient], dict[str, np.ndarray],
                                                       list[dict[str, Any]]]:
    agents = {f"sa-{i}": hub.agent(f"sa-{i}") for i in range(N)}
    service = hub.services.aggregation
    assert service is not None
    seen: list[dict[str, Any]] = []  # everything devices hand the hub (instrumented)
    original = service.device_step

    def spy(req: VerifiedRequest) -> dict[str, Any]:
        reply = original(req)
        seen.append({**req.body, "device": req.device_id, "reply": reply})
        return reply

    service.device_step = spy  # type: ignore[method-assign]
    token = hub.operator_token("analyst")
    r = hub.client.post("/v1/aggregate/rounds", headers=token,
                        json={"devices": sorted(agents), "dims": DIMS, "degree": degree, "phase_timeout_s": 60})
    assert r.status_code == 200, r.text
    rid = r.json()["round"]
    rng = np.random.default_rng(3)
    values = {d: rng.integers(0, 1 << 16, DIMS, dtype=np.uint32) for d in agents}
    clients = {d: RoundClient(lambda body, a=a: a.request("aggregate", AGGREGATE_PATH, body), rid, values[d])
               for d, a in agents.items()}
    return rid, clients, values, seen


def _drive(clients: dict[str, RoundClient], skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for d, c in clients.items():
        if d not in skip:
            c.step()


def test_a_round_over_the_device_plane_sums_exactly_with_a_third_dropped_and_the_hub_never_holds_a_value(
        hub: HubParts) -> None:
    rid, clients, values, seen = _round(hub)
    _drive(clients)  # advertise
    _drive(clients)  # share: sealed boxes to every neighbour
    dropped = {"sa-0", "sa-4", "sa-8"}  # a third vanish after sharing
    _drive(clients, dropped)  # masked vectors
    token = hub.operator_token("analyst")
    # the dropped never send a masked vector: the phase closes at its deadline
    agg = hub.services.aggregation
    assert agg is not None
    agg.clock = Later(agg.clock, timedelta(seconds=61))
    _drive(clients, dropped)  # unmask shares
    status = hub.client.get(f"/v1/aggregate/rounds/{rid}", headers=token).json()
    assert status["phase"] == "done", status
    assert status["survivors"] == N - len(dropped)
    expected = sum((values[d].astype(np.uint64) for d in values if d not in dropped), np.zeros(DIMS, np.uint64))
    assert status["sum"] == [int(x) for x in expected % (1 << 32)]
    # instrumented: no message the hub received carries a device's value, in any encoding
    for body in seen:
        blob = bytes(body["message"])
        for v in values.values():
            assert v.astype("<u4").tobytes() not in blob
            assert v.astype(">u4").tobytes() not in blob
    masked = [cbor2.loads(bytes(b["message"]))["vector"] for b in seen if b["step"] == "masked"]
    assert len(masked) == N - len(dropped)
    for raw in masked:
        vec = np.frombuffer(raw, dtype="<u4")
        assert not any(np.array_equal(vec, v) for v in values.values())
        assert np.count_nonzero(vec >= (1 << 16)) > DIMS // 2  # spread over 2^32, not below 2^16
    # no device handed over both secrets of one peer: each unmask message holds exactly the records its poll
    # named (seed shares of the survivors, key shares and pair seeds of the dropped), nothing else
    kinds: dict[int, set[str]] = {}
    last_poll: dict[str, dict[str, Any]] = {}
    for b in seen:
        if b["step"] == "poll":
            last_poll[b["device"]] = cbor2.loads(base64.urlsafe_b64decode(b["reply"]["message"]))
        if b["step"] == "unmask":
            asked, m = last_poll[b["device"]], cbor2.loads(bytes(b["message"]))
            assert (len(m["seed_shares"]), len(m["key_shares"]), len(m["pair_seeds"])) == (
                17 * len(asked["survivors"]), 17 * len(asked["dropped"]), 16 * len(asked["dropped"]))
            for owner in asked["survivors"]:
                kinds.setdefault(owner, set()).add("seed")
            for owner in asked["dropped"]:
                kinds.setdefault(owner, set()).update({"key", "pair"})
    # (a pair seed s_uv of a dropped peer is no secret of its own: the key shares give every s_uv)
    assert kinds and all(len(k - {"pair"}) == 1 for k in kinds.values())
    assert all("pair" not in k or k == {"key", "pair"} for k in kinds.values())
    # a viewer cannot read the round
    assert hub.client.get(f"/v1/aggregate/rounds/{rid}", headers=hub.operator_token("viewer")).status_code == 403


def test_malformed_shares_and_steps_are_refused_with_a_reason(hub: HubParts) -> None:
    rid, clients, _values, _seen = _round(hub)
    _drive(clients)
    a = clients["sa-1"]
    send = a._send
    with pytest.raises(EnrollmentError, match="400 malformed"):
        send({"round": rid, "step": "shares", "message": cbor2.dumps({"boxes": [[2, b"x" * 10]]})})
    # Where the round is, not bad bytes: each has its own code, so a device knows the round moved on.
    with pytest.raises(EnrollmentError, match="409 wrong_phase"):
        send({"round": rid, "step": "advertise", "message": b"again"})  # the round moved on
    with pytest.raises(EnrollmentError, match="404 round_unknown"):
        send({"round": "ab" * 16, "step": "poll", "message": b""})
    a.step()  # its real boxes
    with pytest.raises(EnrollmentError, match="409 message_duplicate"):
        send({"round": rid, "step": "shares", "message": cbor2.dumps({"boxes": []})})
    with pytest.raises(EnrollmentError, match="409 wrong_phase"):
        send({"round": rid, "step": "masked", "message": b""})  # not the round's phase
    hub.deliver()
    assert {"share_malformed", "wrong_phase", "message_duplicate", "round_unknown"} <= _refusals(hub)


def test_every_round_state_refusal_has_a_status_and_a_public_message() -> None:
    from iotguard.analytics.secagg import ROUND_STATE_REASONS
    from iotguard.errors import PUBLIC_MESSAGES
    from iotguard.hub.api import HTTP_STATUS

    assert set(HTTP_STATUS) >= ROUND_STATE_REASONS and set(PUBLIC_MESSAGES) >= ROUND_STATE_REASONS
    assert all(AggregationError(r).code == r for r in ROUND_STATE_REASONS)
    assert AggregationError("share_malformed").code == "malformed"  # bad bytes stay malformed (400)


def _refusals(hub: HubParts) -> set[str]:
    from sqlalchemy import select

    from iotguard.audit.events import AuditEvent
    from iotguard.hub.audit_store import audit_entries

    with hub.store.engine.connect() as c:
        rows = c.execute(select(audit_entries.c.data).where(audit_entries.c.event_type == "aggregate.refused"))
        return {str(AuditEvent.from_cbor(bytes(data)).details["reason"]) for (data,) in rows}


def test_a_forged_share_box_is_refused_by_the_device(hub: HubParts) -> None:
    rid, clients, _values, _seen = _round(hub)
    _drive(clients)
    _drive(clients)
    agg = hub.services.aggregation
    assert agg is not None
    clients["sa-0"]._send({"round": rid, "step": "poll", "message": b""})  # this process now holds the replay
    with agg._lock:  # a hub that alters a relayed box: the recipient refuses it
        coord = agg._live[rid][1]
        assert isinstance(coord, RoundCoordinator)
        boxes = coord.s.boxes[3]
        sender = next(iter(boxes))
        boxes[sender] = bytes([boxes[sender][0] ^ 1]) + boxes[sender][1:]
    with pytest.raises(AggregationError) as e:
        clients["sa-3"].step()
    assert e.value.reason == "share_forged"


def test_poll_reply_is_parsed_strictly() -> None:
    c = RoundClient(lambda body: {"phase": "share", "message": base64.urlsafe_b64encode(b"\xff").decode()},
                    "00" * 16, np.zeros(4, np.uint32))
    c.participant.done.add("advertise")
    with pytest.raises(AggregationError) as e:
        c.step()
    assert e.value.reason == "message_malformed"


def test_a_round_too_wide_for_one_message_is_refused(hub: HubParts) -> None:
    token = hub.operator_token("analyst")
    devices = [f"d{i}" for i in range(700)]
    r = hub.client.post("/v1/aggregate/rounds", headers=token, json={"devices": devices, "dims": 8})
    assert r.status_code == 400  # everyone-with-everyone at 700: share boxes would not fit a request
    r = hub.client.post("/v1/aggregate/rounds", headers=token, json={"devices": devices, "dims": 8, "degree": 100})
    assert r.status_code == 200


def test_a_device_will_not_unmask_a_sum_of_fewer_than_t_survivors() -> None:
    """Bonawitz et al.'s check on the device: asked to unmask with fewer than ``t`` survivors (too few masked
    vectors arrived), a device hands out no seed or key share, so a curious hub cannot remove the masks of a
    sum of fewer than ``t`` devices (whose noise a DP training run counts on, ADR 1304)."""
    import secrets

    from iotguard.audit.log import MemoryAuditSink
    from iotguard.clock import FixedClock
    from iotguard.hub.services.aggregation import SecureAggregationService

    clock = FixedClock(datetime(2026, 12, 1, tzinfo=UTC))
    service = SecureAggregationService(MemoryAuditSink(), clock)
    devices = [f"dev-{i}" for i in range(4)]
    rid = service.start(devices, 8, threshold=4, phase_timeout_s=10, actor="analyst")

    def send_for(device: str) -> Any:
        return lambda body: service.device_step(
            VerifiedRequest("aggregate", device, clock.now(), secrets.token_bytes(16), body, b""))

    clients = {d: RoundClient(send_for(d), rid, np.arange(8, dtype=np.uint32)) for d in devices}
    for _ in range(2):  # advertise, share
        for c in clients.values():
            c.step()
    for d in devices[:3]:
        assert clients[d].step() == "masked"  # dev-3 never sends its masked vector
    clock.advance(11)
    for d in devices[:3]:
        with pytest.raises(AggregationError, match="too_few_survivors"):
            clients[d].step()
    clock.advance(11)
    out = service.status(rid, actor="analyst")
    assert out["phase"] == "failed" and "sum" not in out
    with service.store.step(rid) as tx:
        assert tx is not None and not [e for e in tx.events_after(0) if e.kind == "unmask"]
