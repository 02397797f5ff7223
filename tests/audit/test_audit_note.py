"""C2SP signed notes, checkpoints and cosignatures."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.audit.note import (
    SIG_COSIGNATURE_V1,
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    add_signatures,
    open_checkpoint,
    open_note,
    parse_note,
    sign_checkpoint,
)
from iotguard.errors import MalformedError, ProofError
from iotguard.keys.keystore import KeyKind
from iotguard.keys.software import SoftwareKeyStore

# The example of the signed-note specification (Go's golang.org/x/mod/sumdb/note).
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_NOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotp"
    "RZb6KE6RyyBwJnAM=\n"
)


def test_signed_note_known_answer() -> None:
    verifier = NoteVerifier.from_vkey(GO_VKEY)
    assert verifier.vkey() == GO_VKEY
    note, verified = open_note(GO_NOTE, [verifier])
    assert verified == [verifier]
    assert note.text.startswith("If you think")
    assert note.to_text() == GO_NOTE
    with pytest.raises(ProofError):
        open_note(GO_NOTE.replace("answer", "ANSWER"), [verifier])


@pytest.fixture
def keys(tmp_path: Path) -> SoftwareKeyStore:
    ks = SoftwareKeyStore(tmp_path)
    ks.generate("log", KeyKind.ED25519)
    ks.generate("w", KeyKind.ED25519)
    return ks


def test_checkpoint_round_trip_and_strict_parsing(keys: SoftwareKeyStore) -> None:
    signer = NoteSigner(keys, "log", "example.org/log")
    cp = Checkpoint("example.org/log", 123, b"\x07" * 32, ("ext line",))
    note = sign_checkpoint(cp, signer)
    assert note.startswith("example.org/log\n123\nBwcH")
    assert open_checkpoint(note, signer.verifier)[0] == cp
    vkey = NoteVerifier.from_vkey(signer.verifier.vkey())
    assert open_checkpoint(note, vkey)[0] == cp
    for bad in ("example.org/log\n0123\n" + "A" * 44 + "\n", "example.org/log\n1\nAAAA\n", "x\n1\n"):
        with pytest.raises(MalformedError):
            Checkpoint.from_body(bad)
    with pytest.raises(ProofError):
        open_checkpoint(note.replace("123", "124", 1), signer.verifier)
    other = NoteSigner(keys, "w", "example.org/log")
    with pytest.raises(ProofError):
        open_checkpoint(note, other.verifier)


def test_cosignature_round_trip(keys: SoftwareKeyStore) -> None:
    log = NoteSigner(keys, "log", "example.org/log")
    w = NoteSigner(keys, "w", "witness.example/w", SIG_COSIGNATURE_V1)
    note = sign_checkpoint(Checkpoint("example.org/log", 5, b"\x01" * 32), log)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    cosigned = add_signatures(note, [w.sign(parse_note(note).text, when)])
    parsed, verified = open_note(cosigned, [log.verifier, w.verifier])
    assert len(parsed.signatures) == 2 and len(verified) == 2
    sig = parsed.signatures[1]
    assert w.verifier.verify(parsed.text, sig) == int(when.timestamp())
    assert NoteVerifier.from_vkey(w.verifier.vkey()).sig_type == SIG_COSIGNATURE_V1
    with pytest.raises(MalformedError):
        w.sign(parse_note(note).text)  # a cosignature needs its time


def test_malformed_notes_are_rejected() -> None:
    for bad in ("no signatures\n", "text\n\n- name AAAA\n", "text\n\n\u2014 na me AAAAAAAA\n", "a\x01\n\n"):
        with pytest.raises(MalformedError):
            parse_note(bad)
    with pytest.raises(MalformedError):
        NoteVerifier.from_vkey("name+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
