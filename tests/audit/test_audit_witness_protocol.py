"""The tlog-witness protocol, k-of-n cosigning and split-view detection (unit level, no network)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.audit import (
    SIG_COSIGNATURE_V1,
    AuditEvent,
    EventType,
    MemoryLogStore,
    NoteSigner,
    NoteVerifier,
    TransparencyLog,
    Witness,
    verify_cosigned,
)
from iotguard.audit.monitor import AlertKind
from iotguard.audit.witness_protocol import (
    MAX_REQUEST_BYTES,
    QuorumNotMet,
    collect_cosignatures,
    detect_split_view,
    encode_add_checkpoint,
    handle_add_checkpoint,
    parse_add_checkpoint,
)
from iotguard.errors import MalformedError, ProofError
from iotguard.hub.audit_store import FileWitnessState
from iotguard.keys.keystore import KeyKind
from iotguard.keys.software import SoftwareKeyStore

T0 = datetime(2026, 7, 1, tzinfo=UTC)
ORIGIN = "wp.test/audit"


def new_log(keys: SoftwareKeyStore) -> TransparencyLog:
    return TransparencyLog(MemoryLogStore(), NoteSigner(keys, "log", ORIGIN))


def grow(log: TransparencyLog, n: int, tag: str) -> str:
    log.append([AuditEvent(EventType.AUTH_FAILED, T0, "hub", f"{tag}-{i}") for i in range(n)])
    return log.publish_checkpoint(T0)


@pytest.fixture
def keys(tmp_path: Path) -> SoftwareKeyStore:
    ks = SoftwareKeyStore(tmp_path / "keys")
    for label in ("log", "w1", "w2", "w3"):
        ks.generate(label, KeyKind.ED25519)
    return ks


def make_witness(keys: SoftwareKeyStore, tmp_path: Path, label: str, log_key: NoteVerifier) -> Witness:
    signer = NoteSigner(keys, label, f"{label}.test/witness", SIG_COSIGNATURE_V1)
    return Witness(signer, [log_key], FileWitnessState(tmp_path / label / "heads.json"))


class LocalEndpoint:
    """A witness reached in-process through the protocol handler (the HTTPS path is tested end to end)."""

    def __init__(self, witness: Witness, log: TransparencyLog, *, down: bool = False) -> None:
        self.witness, self.log, self.down = witness, log, down

    @property
    def verifier(self) -> NoteVerifier:
        return self.witness.verifier

    def add_checkpoint(self, checkpoint: str, size_hint: int) -> tuple[int, str]:
        if self.down:
            return 503, "down\n"
        size = int(checkpoint.split("\n", 2)[1])
        proof = self.log.consistency_proof(size_hint, size) if 0 < size_hint < size else []
        body = encode_add_checkpoint(size_hint, proof, checkpoint)
        answer = handle_add_checkpoint(self.witness, [self.log.verifier], body, T0)
        return answer.status, answer.body


def test_request_round_trips_and_is_parsed_strictly() -> None:
    proof = [bytes([i]) * 32 for i in range(3)]
    req = parse_add_checkpoint(encode_add_checkpoint(7, proof, "o\n9\nroot\n\n— k sig\n"))
    assert (req.old_size, req.proof, req.checkpoint) == (7, tuple(proof), "o\n9\nroot\n\n— k sig\n")
    short = base64.b64encode(b"x" * 31).decode()
    for bad in (
        b"old 1\nnot base64!\n\ncp",
        b"old 01\n\ncp",
        b"old -1\n\ncp",
        b"new 1\n\ncp",
        b"old 1\ncp",
        f"old 1\n{short}\n\ncp".encode(),
        b"\xff\xfe",
        b"old 1\n" + b"A" * MAX_REQUEST_BYTES,
    ):
        with pytest.raises(MalformedError):
            parse_add_checkpoint(bad)


def test_witness_answers_with_protocol_status_codes(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    log = new_log(keys)
    w = make_witness(keys, tmp_path, "w1", log.verifier)
    logs = [log.verifier]
    first = grow(log, 5, "a")
    ok = handle_add_checkpoint(w, logs, encode_add_checkpoint(0, [], first), T0)
    assert ok.status == 200 and ok.body.startswith("\u2014 w1.test/witness ")
    verify_cosigned(first + ok.body, log.verifier, [w.verifier], 1)
    second = grow(log, 3, "b")
    stale = handle_add_checkpoint(w, logs, encode_add_checkpoint(0, [], second), T0)
    assert (stale.status, stale.body, stale.content_type) == (409, "5\n", "text/x.tlog.size")
    bad_proof = handle_add_checkpoint(w, logs, encode_add_checkpoint(5, [b"\x00" * 32], second), T0)
    assert bad_proof.status == 422
    good = handle_add_checkpoint(w, logs, encode_add_checkpoint(5, log.consistency_proof(5, 8), second), T0)
    assert good.status == 200 and w.last_cosigned(ORIGIN).size == 8  # type: ignore[union-attr]
    stranger = TransparencyLog(MemoryLogStore(), NoteSigner(keys, "w3", "other.test/log"))
    assert handle_add_checkpoint(w, logs, encode_add_checkpoint(0, [], grow(stranger, 1, "s")), T0).status == 404
    forged = TransparencyLog(MemoryLogStore(), NoteSigner(keys, "w2", ORIGIN))  # right name, wrong key
    assert handle_add_checkpoint(w, logs, encode_add_checkpoint(8, [], grow(forged, 9, "f")), T0).status == 403
    assert handle_add_checkpoint(w, logs, b"garbage", T0).status == 400


def test_quorum_k_of_n_makes_a_checkpoint_final(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    log = new_log(keys)
    ws = [make_witness(keys, tmp_path, label, log.verifier) for label in ("w1", "w2", "w3")]
    endpoints = [LocalEndpoint(ws[0], log), LocalEndpoint(ws[1], log), LocalEndpoint(ws[2], log, down=True)]
    sizes: dict[str, int] = {}
    note = grow(log, 4, "a")
    final = collect_cosignatures(note, log.verifier, endpoints, 2, sizes)
    assert final.cosigners == ("w1.test/witness", "w2.test/witness")
    assert verify_cosigned(final.note, log.verifier, [w.verifier for w in ws], 2)
    with pytest.raises(ProofError, match="not final"):
        collect_cosignatures(note, log.verifier, endpoints, 3, sizes)
    # The hub lost its memory of sizes: the 409 tells it, and it retries with the right proof.
    later = grow(log, 6, "b")
    assert collect_cosignatures(later, log.verifier, endpoints[:2], 2, {}).cosigners == final.cosigners


def test_split_view_with_two_witnesses_is_caught(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    """Check for a split view: the log shows witness 1 one history and witness 2 another of the same size."""
    honest, fork = new_log(keys), new_log(keys)  # same log key: the operator forks its own log
    w1 = make_witness(keys, tmp_path, "w1", honest.verifier)
    w2 = make_witness(keys, tmp_path, "w2", honest.verifier)
    note_a, note_b = grow(honest, 10, "a"), grow(fork, 10, "b")
    assert note_a != note_b
    seen_a = collect_cosignatures(note_a, honest.verifier, [LocalEndpoint(w1, honest)], 1, {})
    seen_b = collect_cosignatures(note_b, fork.verifier, [LocalEndpoint(w2, fork)], 1, {})
    # Each witness alone saw a consistent log; comparing what they cosigned exposes the fork.
    alerts = detect_split_view([seen_a.note, seen_b.note], honest.verifier)
    assert [a.kind for a in alerts] == [AlertKind.SPLIT_VIEW]
    # And a hub requiring both witnesses cannot make either view final; witness 2 raises the alert.
    answer = handle_add_checkpoint(w2, [honest.verifier], encode_add_checkpoint(10, [], note_a), T0)
    assert answer.status == 409 and answer.alert is not None and answer.alert.kind == AlertKind.SPLIT_VIEW
    both = [LocalEndpoint(w1, honest), LocalEndpoint(w2, honest)]
    with pytest.raises(QuorumNotMet, match="not final") as exc:
        collect_cosignatures(note_a, honest.verifier, both, 2, {})
    assert exc.value.split_view
    one = collect_cosignatures(note_a, honest.verifier, both, 1, {})
    assert [(o.ok, o.reason) for o in one.outcomes] == [(True, "cosigned"), (False, AlertKind.SPLIT_VIEW)]
    assert one.split_view
    assert detect_split_view([seen_a.note, seen_a.note], honest.verifier) == []


def test_witness_app_limits_bodies_keeps_notes_and_records_alerts(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from iotguard.hub.witness_server import latest_cosigned, make_witness_app

    honest, fork = new_log(keys), new_log(keys)
    w = make_witness(keys, tmp_path, "w1", honest.verifier)
    state = tmp_path / "w1-state"
    state.mkdir()
    client = TestClient(make_witness_app(w, [honest.verifier], state, clock=lambda: T0))
    assert client.post("/add-checkpoint", content=b"x" * (MAX_REQUEST_BYTES + 1)).status_code == 413
    note = grow(honest, 3, "a")
    ok = client.post("/add-checkpoint", content=encode_add_checkpoint(0, [], note))
    assert ok.status_code == 200
    assert latest_cosigned(state, honest.verifier) == note + ok.text
    split = client.post("/add-checkpoint", content=encode_add_checkpoint(3, [], grow(fork, 3, "b")))
    assert split.status_code == 409 and split.text == "3\n"
    assert split.headers["content-type"].startswith("text/x.tlog.size")
    assert '"split_view"' in (state / "alerts.jsonl").read_text()
