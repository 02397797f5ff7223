"""Privacy receipts wait in the agent's outbox until the hub has them (agent/receipts.py, ADR 1502)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from iotguard.agent.outbox import Outbox
from iotguard.agent.receipts import RETRY_MAX_S, RETRY_MIN_S, ReceiptSender, SendResult


class _Hub:
    def __init__(self) -> None:
        self.answers: list[SendResult | Exception] = []
        self.got: list[bytes] = []

    def send(self, blob: bytes) -> SendResult:
        self.got.append(blob)
        a = self.answers.pop(0) if self.answers else SendResult(200)
        if isinstance(a, Exception):
            raise a
        return a


@pytest.fixture
def sender(tmp_path: Path) -> tuple[ReceiptSender, _Hub, list[float]]:
    hub, now = _Hub(), [0.0]
    return ReceiptSender(Outbox(tmp_path / "outbox.db"), hub.send, "dev-1", lambda: now[0]), hub, now


def test_a_receipt_refused_while_the_hub_database_fails_is_kept_and_sent_later(
        sender: tuple[ReceiptSender, _Hub, list[float]], tmp_path: Path) -> None:
    s, hub, now = sender
    s.outbox.add_receipt(b"r1")
    s.outbox.add_receipt(b"r2")
    hub.answers = [SendResult(503, "storage_error")]
    assert s.flush() == 0
    assert s.pending == 2 and s.kept == 1 and not s.dropped
    # Durable: a restarted agent (new outbox handle on the same file) still holds both.
    assert [b for _i, b in Outbox(tmp_path / "outbox.db").receipts()] == [b"r1", b"r2"]
    assert s.flush() == 0 and len(hub.got) == 1  # backing off: nothing sent yet
    now[0] += RETRY_MIN_S
    assert s.flush() == 2 and s.pending == 0 and s.delivered == 2
    assert hub.got == [b"r1", b"r1", b"r2"]


@pytest.mark.parametrize("answer", [SendResult(500, "error"), SendResult(503, "keystore_error"),
                                    SendResult(429, "locked_out"), SendResult(409, "stale"),
                                    SendResult(403, "policy_denied"), httpx.ConnectError("down")])
def test_the_hub_failing_or_refusing_the_request_keeps_the_receipt(
        sender: tuple[ReceiptSender, _Hub, list[float]], answer: SendResult | Exception) -> None:
    s, hub, _now = sender
    s.outbox.add_receipt(b"r1")
    hub.answers = [answer]
    s.flush()
    assert s.pending == 1 and not s.dropped


@pytest.mark.parametrize("code", ["malformed", "forged", "budget_exhausted", "revoked"])
def test_a_receipt_the_hub_can_never_store_is_dropped_and_counted(
        sender: tuple[ReceiptSender, _Hub, list[float]], code: str) -> None:
    s, hub, _now = sender
    s.outbox.add_receipt(b"bad")
    s.outbox.add_receipt(b"good")
    hub.answers = [SendResult(400 if code == "malformed" else 422, code)]
    assert s.flush() == 1
    assert s.pending == 0 and s.dropped == {code: 1} and s.delivered == 1


def test_back_off_doubles_up_to_its_ceiling_and_force_ignores_it(
        sender: tuple[ReceiptSender, _Hub, list[float]]) -> None:
    s, hub, now = sender
    s.outbox.add_receipt(b"r1")
    waits = []
    for _ in range(10):
        hub.answers = [SendResult(503, "storage_error")]
        s.flush(force=True)
        waits.append(s._not_before - now[0])
    assert waits[:3] == [RETRY_MIN_S, 2 * RETRY_MIN_S, 4 * RETRY_MIN_S] and waits[-1] == RETRY_MAX_S
    assert s.flush(force=True) == 1 and s.pending == 0
