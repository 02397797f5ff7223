"""Secure-aggregation messages on the wire (docs/wire.md §10a, ADR 0416): fixed-width records parsed strictly
with a reason, share boxes bound to sender and recipient without carrying them, 16-byte secrets whose
shares must give the advertised mask key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import cbor2
import numpy as np
import pytest

from iotguard.analytics.secagg import BOX_BYTES, PRIME, SHARE_BYTES, AggregationError, Aggregator, Device
from iotguard.analytics.secagg_round import Participant, RoundCoordinator, RoundSpec, encode_message

T0 = datetime(2026, 12, 1, tzinfo=UTC)
RID = bytes(range(16))
N, DIMS = 6, 8


def _to_phase(phase: str) -> tuple[RoundCoordinator, dict[str, Participant], dict[str, dict[str, Any]]]:
    """A round of six devices (everyone a neighbour) driven until the coordinator is in ``phase``; returns
    the last poll each device got."""
    ids = tuple(f"d{i}" for i in range(N))
    coord = RoundCoordinator(RID, RoundSpec(ids, DIMS), T0)
    parts = {d: Participant(RID, np.arange(DIMS, dtype=np.uint32) + i) for i, d in enumerate(ids)}
    for d in ids:
        coord.advertise(d, parts[d].advertise(), T0)
    steps = {"shares": coord.submit_boxes, "masked": coord.submit_masked, "unmask": coord.submit_unmask}
    for current in ("share", "masked", "unmask"):
        polls = {d: coord.poll(d, T0) for d in ids}
        assert {p["phase"] for p in polls.values()} == {current}
        if current == phase:
            return coord, parts, polls
        for d in ids:
            out = parts[d].answer(polls[d])
            assert out is not None
            steps[out[0]](d, out[1], T0)
    raise AssertionError(phase)


def test_a_share_box_replayed_to_another_recipient_or_as_another_senders_does_not_open() -> None:
    """The box plaintext carries no indices (ADR 0416): the binding is the box key (HKDF info: round, sender,
    recipient). A hub that relays a's box for b to c, or hands it to b as d's, gets ``share_forged``."""
    a, b, c, d = (Device(i, np.zeros(4, np.uint32)) for i in range(4))
    shares = a.shares_for_peers(4, 3)
    boxes = a.seal_shares(shares, {x.index: x.encryption_key for x in (b, c, d)}, RID)
    assert {len(x) for x in boxes.values()} == {BOX_BYTES} == {2 * SHARE_BYTES + 16}
    b.open_shares(0, boxes[1], a.encryption_key, RID)  # the genuine delivery opens
    for who, sender, box, key, rid in (
            (c, 0, boxes[1], a.encryption_key, RID),  # b's box replayed to c
            (b, 3, boxes[1], d.encryption_key, RID),  # a's box to b, relayed as d's
            (b, 2, boxes[1], a.encryption_key, RID),  # a's box and key, claimed as from index 2: info differs
            (b, 0, boxes[1], a.encryption_key, bytes(16)),  # replayed into another round
    ):
        with pytest.raises(AggregationError) as e:
            who.open_shares(sender, box, key, rid)
        assert e.value.reason == "share_forged"


def test_shares_messages_are_one_box_per_neighbour_in_order_parsed_strictly() -> None:
    coord, parts, polls = _to_phase("share")
    out = parts["d0"].answer(polls["d0"])
    assert out is not None
    raw = cbor2.loads(out[1])["boxes"]
    assert isinstance(raw, bytes) and len(raw) == BOX_BYTES * (N - 1)
    assert len(out[1]) == 1 + 6 + 2 + len(raw)  # map(1), "boxes", bstr head (1 + 1 byte), the records
    for bad, reason in ((raw[:-1], "share_malformed"), (raw + bytes(BOX_BYTES), "share_malformed"),
                        ([raw], "share_malformed")):
        with pytest.raises(AggregationError) as e:
            coord.submit_boxes("d0", encode_message({"boxes": bad}), T0)
        assert e.value.reason == reason
    with pytest.raises(AggregationError) as e:
        coord.submit_boxes("d0", encode_message({"boxes": raw, "index": 0}), T0)
    assert e.value.reason == "message_malformed"
    coord.submit_boxes("d0", out[1], T0)
    assert set(coord.s.boxes) == {1, 2, 3, 4, 5}  # relayed to each neighbour, in ascending order


def test_unmask_messages_are_records_in_the_polls_order_parsed_strictly() -> None:
    ids = tuple(f"d{i}" for i in range(N))
    coord, parts, polls = _to_phase("masked")
    for d in ids[1:]:  # d0 drops before its masked vector
        out = parts[d].answer(polls[d])
        assert out is not None
        coord.submit_masked(d, out[1], T0)
    coord.tick(T0 + coord.spec.phase_timeout)
    poll = coord.poll("d1", T0 + coord.spec.phase_timeout)
    assert poll == {"phase": "unmask", "survivors": [1, 2, 3, 4, 5], "dropped": [0]}
    out = parts["d1"].answer(poll)
    assert out is not None
    m = cbor2.loads(out[1])
    assert (len(m["seed_shares"]), len(m["key_shares"]), len(m["pair_seeds"])) == (5 * 17, 17, 16)
    top = PRIME.to_bytes(SHARE_BYTES, "big")  # the prime itself: one past the largest field element
    for bad in ({**m, "seed_shares": m["seed_shares"][:-1]}, {**m, "key_shares": b""},
                {**m, "pair_seeds": m["pair_seeds"] + b"\0"}, {**m, "key_shares": top},
                {**m, "seed_shares": [m["seed_shares"]]}):
        with pytest.raises(AggregationError) as e:
            coord.submit_unmask("d1", encode_message(bad), T0)
        assert e.value.reason == "share_malformed"
    with pytest.raises(AggregationError) as e:
        coord.submit_unmask("d1", encode_message({"seed_shares": m["seed_shares"]}), T0)
    assert e.value.reason == "message_malformed"
    coord.submit_unmask("d1", out[1], T0)
    # map(3); "key_shares", bstr(17); "pair_seeds", bstr(16); "seed_shares", bstr(85) (two-byte head)
    assert len(out[1]) == 1 + (11 + 1 + 17) + (11 + 1 + 16) + (12 + 2 + 85)


def test_a_device_refuses_a_poll_that_asks_for_what_it_does_not_hold_or_is_not_in_order() -> None:
    _coord, parts, polls = _to_phase("share")
    share_poll = polls["d2"]
    for bad in ({**share_poll, "peers": list(reversed(share_poll["peers"]))},
                {**share_poll, "keys": share_poll["keys"][:-1]},
                {**share_poll, "peers": [*share_poll["peers"][:-1], 2]}):
        with pytest.raises(AggregationError) as e:
            Participant(RID, np.zeros(DIMS, np.uint32)).answer(bad)
        assert e.value.reason == "message_malformed"
    coord, parts, polls = _to_phase("masked")
    with pytest.raises(AggregationError) as e:  # a box from a device that is no neighbour (itself)
        parts["d2"].answer({**polls["d2"], "senders": [2], "boxes": bytes(BOX_BYTES)})
    assert e.value.reason == "message_malformed"  # (d2 takes no further part: it refused its poll)
    for d in coord.members:
        if d != "d2":
            out = parts[d].answer(polls[d])
            assert out is not None
            coord.submit_masked(d, out[1], T0)
    with pytest.raises(AggregationError) as e:  # a device it never got a box from cannot be "dropped"
        parts["d3"].answer({"phase": "unmask", "survivors": [0, 1, 3, 4], "dropped": [7]})
    assert e.value.reason == "unmask_request_inconsistent"


def test_a_dropped_device_whose_shares_do_not_give_its_advertised_mask_key_is_named() -> None:
    """Dropped device 0 advertised one mask key and dealt shares of another secret: its honest neighbours'
    pair seeds are right, so the hub must blame the dealer (the derived key differs from the advertised
    one), not a holder."""
    devices = [Device(i, np.full(DIMS, i, np.uint32)) for i in range(N)]
    agg = Aggregator(N, 4, DIMS)
    for dev in devices:
        agg.add_public_key(dev.index, dev.public_key)
    devices[0]._mask_secret = bytes(16)  # shares of a secret that is not the advertised key's
    for dev in devices:
        for s in dev.shares_for_peers(N, 4):
            devices[s.holder].receive_share(s)
    survivors = devices[1:]
    for dev in survivors:
        agg.add_masked(dev.index, dev.masked_input(dict(agg.public_keys)))
    shares = [s for dev in survivors for s in dev.unmask_shares([x.index for x in survivors], [0])]
    with pytest.raises(AggregationError) as e:
        agg.unmask(shares)
    assert e.value.reason == "share_inconsistent" and "shares of 0 do not give its mask key" in str(e.value)
