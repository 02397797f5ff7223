"""The hub treats a checkpoint as final, and anchors it, only with k of n witness cosignatures."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from iotguard.audit import AuditEvent, CheckpointSchedule, TransparencyLog, verify_cosigned
from iotguard.audit.anchor import AnchorReceipt
from iotguard.audit.monitor import AlertKind
from iotguard.clock import FixedClock
from iotguard.config import HubConfig
from iotguard.errors import ConfigError
from iotguard.hub.witnessing import CheckpointFinality, finality_from_config, load_witnesses
from iotguard.keys.software import SoftwareKeyStore
from tests.audit.test_audit_witness_protocol import T0, LocalEndpoint, grow, keys, make_witness, new_log

__all__ = ["keys"]  # the fixture, re-used


class RecordingAnchor:
    """An anchor that keeps what it was given."""

    name = "recording"

    def __init__(self) -> None:
        self.notes: list[str] = []

    def anchor(self, checkpoint: str, now: object) -> AnchorReceipt:
        self.notes.append(checkpoint)
        return AnchorReceipt(self.name, "o", int(checkpoint.split("\n")[1]), b"", str(len(self.notes)))


def _events(log: TransparencyLog, start: int) -> list[AuditEvent]:
    return [AuditEvent.from_cbor(e) for e in log.entries(start, log.size())]


def test_checkpoint_is_final_and_anchored_only_with_the_quorum(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    log = new_log(keys)
    w1, w2 = (make_witness(keys, tmp_path, n, log.verifier) for n in ("w1", "w2"))
    down = LocalEndpoint(w2, log, down=True)
    finality = CheckpointFinality(log, [LocalEndpoint(w1, log), down], 2, FixedClock(T0))
    anchor = RecordingAnchor()
    schedule = CheckpointSchedule(log, timedelta(seconds=1), [anchor], finalize=finality)
    grow(log, 5, "a")

    out = schedule.publish_now(T0)
    assert out.failures == [("witnesses", "not_final")] and out.final is None
    assert anchor.notes == [] and log.latest_final_checkpoint() is None
    refused = _events(log, 5)
    assert [e.type for e in refused] == ["log.checkpoint_not_final"]
    assert refused[0].details["refusals"] == [{"witness": "w2.test/witness", "reason": "http_503"}]

    down.down = False
    out = schedule.publish_now(T0 + timedelta(seconds=2))
    final = log.latest_final_checkpoint()
    assert final is not None and out.final == final and anchor.notes == [final]
    assert len(verify_cosigned(final, log.verifier, [w1.verifier, w2.verifier], 2)) == 2
    assert int(final.split("\n")[1]) == log.size()  # the refusal entry is in what became final


def test_a_split_view_is_never_final_and_is_reported(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    """Check for a split view: witness 2 already cosigned another history of this size."""
    log, fork = new_log(keys), new_log(keys)  # the operator forks its own log (same key)
    w1, w2 = (make_witness(keys, tmp_path, n, log.verifier) for n in ("w1", "w2"))
    grow(fork, 6, "b")
    assert CheckpointFinality(fork, [LocalEndpoint(w2, fork)], 1, FixedClock(T0))(fork.publish_checkpoint()) \
        is not None
    note = grow(log, 6, "a")
    finality = CheckpointFinality(log, [LocalEndpoint(w1, log), LocalEndpoint(w2, log)], 2, FixedClock(T0))
    assert finality(note) is None
    assert log.latest_final_checkpoint() is None
    events = _events(log, 6)
    assert [e.type for e in events] == ["log.checkpoint_not_final", "log.split_view_reported"]
    assert events[1].details["witnesses"] == ["w2.test/witness"]
    assert events[0].details["refusals"] == [{"witness": "w2.test/witness", "reason": AlertKind.SPLIT_VIEW}]


def test_a_final_checkpoint_must_be_of_this_log(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    log, other = new_log(keys), new_log(keys)
    grow(log, 3, "a")
    foreign = grow(other, 4, "x")
    from iotguard.errors import ProofError

    with pytest.raises(ProofError):
        log.save_final_checkpoint(foreign)  # same key, but not this log's tree
    assert log.latest_final_checkpoint() is None


def test_witnesses_file_is_parsed_strictly(tmp_path: Path, keys: SoftwareKeyStore) -> None:
    log = new_log(keys)
    w1 = make_witness(keys, tmp_path, "w1", log.verifier)
    vkey = w1.verifier.vkey()
    path = tmp_path / "witnesses.json"
    cfg = HubConfig(data_dir=str(tmp_path / "hub"), witnesses_file=str(path), witness_quorum=2)
    bad_files = [
        "not json",
        "[]",
        json.dumps([{"url": "http://w1.test", "key": vkey}]),
        json.dumps([{"url": "https://w1.test", "key": "garbage"}]),
        json.dumps([{"url": "https://w1.test", "key": vkey, "extra": 1}]),
    ]
    for text in bad_files:
        path.write_text(text)
        with pytest.raises(ConfigError):
            load_witnesses(str(path))
    with pytest.raises(ConfigError, match=r"needs hub\.witnesses_file"):
        finality_from_config(HubConfig(data_dir=str(tmp_path / "h2"), witness_quorum=1), log, FixedClock(T0))
    assert finality_from_config(HubConfig(data_dir=str(tmp_path / "h3")), log, FixedClock(T0)) is None
    path.write_text(json.dumps([{"url": "https://w1.test", "key": vkey}]))
    assert [(u, k.name) for u, k, _ in load_witnesses(str(path))] == [("https://w1.test", "w1.test/witness")]
    with pytest.raises(ConfigError, match="between 1 and the 1"):
        finality_from_config(cfg, log, FixedClock(T0))  # quorum 2 of 1
    cfg.witness_quorum = 0
    finality = finality_from_config(cfg, log, FixedClock(T0))
    assert finality is not None and finality.quorum == 1
