"""Hub ingest of media objects: stored once and acknowledged only when the data contract allows them."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotguard.channel import media_topic
from iotguard.hub.ingest import Incoming
from iotguard.wire import MediaObject, decode_envelope, decode_media_object, encode_media_object
from tests.hub.conftest import HubParts, make_hub


@pytest.fixture
def hub(tmp_path: Path):  # type: ignore[no-untyped-def]
    parts = make_hub(tmp_path)
    yield parts
    parts.store.engine.dispose()


def _media(purpose: str = "snapshots", release: str = "anonymised", method: str | None = "face-redact",
           stream: str = "camera") -> MediaObject:
    return MediaObject(ts_ms=1_700_000_000_000, purpose=purpose, stream=stream, release=release, method=method,
                       codec="jpeg", data=b"\xff\xd8redacted-frame\xff\xd9")


def _seal(agent, obj: MediaObject, topic: str | None = None) -> Incoming:  # type: ignore[no-untyped-def]
    own = media_topic(agent.sealer.segment, agent.device_id)
    _seq, env = agent.sealer.seal(encode_media_object(obj), topic=own)
    return Incoming(topic or own, env)


def test_declared_anonymised_media_is_stored_once_and_acknowledged(hub: HubParts) -> None:
    cam = hub.agent("cam-0001", model="cam-1")
    msg = _seal(cam, _media())
    out = hub.processor.process([msg, msg])
    assert out.stored == 1 and out.rejected["replay"] == 1
    seq = decode_envelope(msg.payload).seq
    assert [k for k in out.acks] == [("iotguard/default/cam-0001/ack", 1)]
    rows = hub.store.readings_after(0)
    assert [(r.topic, decode_media_object(r.body).method) for r in rows] == [(msg.topic, "face-redact")]
    assert rows[0].seq == seq


@pytest.mark.parametrize(("obj", "why"), [
    (_media(release="raw", method=None), "raw frames not declared for this purpose"),
    (_media(method="blur"), "another anonymiser than the declared one"),
    (_media(purpose="occupancy"), "an inference-only purpose sends no media"),
    (_media(purpose="marketing"), "an undeclared purpose"),
    (_media(stream="doorbell-mic"), "an undeclared stream"),
])
def test_media_the_contract_does_not_allow_is_refused(hub: HubParts, obj: MediaObject, why: str) -> None:
    """Check for over-collection at the hub: an authentic media object outside the contract is not stored."""
    cam = hub.agent("cam-0001", model="cam-1")
    out = hub.processor.process([_seal(cam, obj)])
    assert out.stored == 0 and out.rejected["policy_denied"] == 1, why
    assert hub.store.reading_count() == 0


def test_media_on_the_telemetry_topic_does_not_open(hub: HubParts) -> None:
    """The topic is in the associated data: a media envelope moved to the telemetry topic is a forgery."""
    cam = hub.agent("cam-0001", model="cam-1")
    out = hub.processor.process([_seal(cam, _media(), topic=cam.sealer.topic)])
    assert out.stored == 0 and out.rejected["forged"] == 1


def test_a_malformed_media_object_is_refused_with_a_reason(hub: HubParts) -> None:
    cam = hub.agent("cam-0001", model="cam-1")
    own = media_topic(cam.sealer.segment, cam.device_id)
    _seq, env = cam.sealer.seal(b"\xa1\x61x\x01", topic=own)
    out = hub.processor.process([Incoming(own, env)])
    assert out.stored == 0 and out.rejected["malformed"] == 1


def test_media_envelopes_have_their_own_size_limit(tmp_path: Path) -> None:
    parts = make_hub(tmp_path, max_media_envelope_bytes=2048)
    cam = parts.agent("cam-0001", model="cam-1")
    big = MediaObject(1, "snapshots", "camera", "anonymised", "face-redact", "jpeg", b"\x00" * 4096)
    out = parts.processor.process([_seal(cam, big), _seal(cam, _media())])  # the second fits
    assert out.stored == 1 and out.rejected["malformed"] == 1
    parts.store.engine.dispose()


def test_the_telemetry_api_lists_media_objects_by_their_metadata(hub: HubParts) -> None:
    cam = hub.agent("cam-0001", model="cam-1")
    hub.services.consent.link("owner-1", "cam-0001")  # raw access is purpose-bound (ADR 0405)
    hub.services.consent.change("owner-1", "snapshots", True, actor="owner")
    assert hub.processor.process([_seal(cam, _media())]).stored == 1
    assert hub.client.get("/v1/telemetry", params={"purpose": "snapshots"},
                          headers=hub.operator_token("viewer")).status_code == 403  # viewers: aggregates only
    items = hub.client.get("/v1/telemetry", params={"purpose": "snapshots"},
                           headers=hub.operator_token("operator")).json()["items"]
    assert [i["media"] for i in items] == [{"purpose": "snapshots", "stream": "camera", "release": "anonymised",
                                            "method": "face-redact", "codec": "jpeg", "bytes": 18}]


def test_a_media_object_lost_on_the_way_is_sent_again_from_the_outbox_and_stored_once(hub: HubParts,
                                                                                      tmp_path: Path) -> None:
    """Media objects used to be published at most once: one lost before the hub stored it was gone.
    Now the agent keeps it in its outbox (with its media topic) until the hub's acknowledgement."""
    from iotguard.agent.media import send_media
    from iotguard.agent.outbox import Outbox

    cam = hub.agent("cam-0001", model="cam-1")  # no broker connection: the first publish is lost
    (seq,) = send_media(cam, [_media()])
    (entry,) = cam.outbox.due_entries(float("inf"))
    assert entry[1] == seq and entry[3] == media_topic(cam.sealer.segment, "cam-0001")
    cam.outbox.close()  # a restart of the agent: the media object is still there
    cam.outbox = Outbox(tmp_path / "agents" / "cam-0001" / "outbox.db")
    (e, s, env, topic) = cam.outbox.due_entries(float("inf"))[0]
    assert topic is not None
    out = hub.processor.process([Incoming(topic, env), Incoming(topic, env)])  # sent again, and once more
    assert out.stored == 1 and out.rejected["replay"] == 1
    ((_ack_topic, epoch), body), = out.acks.items()
    cam._on_message(None, None, type("M", (), {"topic": _ack_topic, "payload": body})())  # type: ignore[arg-type]
    assert cam.pending() == 0 and epoch == e and s == seq


def test_an_outbox_from_before_media_gains_its_topic_column(tmp_path: Path) -> None:
    import sqlite3

    from iotguard.agent.outbox import Outbox

    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("CREATE TABLE outbox (epoch INTEGER NOT NULL, seq INTEGER NOT NULL, envelope BLOB NOT NULL, "
               "last_sent REAL NOT NULL DEFAULT 0, PRIMARY KEY (epoch, seq))")
    db.execute("INSERT INTO outbox (epoch, seq, envelope) VALUES (1, 7, x'01')")
    db.commit()
    db.close()
    box = Outbox(tmp_path / "old.db")
    assert box.due_entries(1.0) == [(1, 7, b"\x01", None)]  # kept, on the telemetry topic
    box.close()
