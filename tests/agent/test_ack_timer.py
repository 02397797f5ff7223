"""The resend timeout adapts to measured acknowledgement times (ADR 1507, RFC 6298's estimator)."""

from __future__ import annotations

from pathlib import Path

from iotguard.agent.ack_timer import MAX_STRETCH, AckTimer
from iotguard.agent.outbox import Outbox


def test_before_any_sample_the_configured_timeout_applies() -> None:
    assert AckTimer(3.0).timeout_s == 3.0


def test_a_slow_hub_stretches_the_timeout_beyond_its_acknowledgement_time() -> None:
    timer = AckTimer(3.0)
    for _ in range(20):
        timer.sample(12.0)
    assert 12.0 <= timer.timeout_s <= 3.0 * MAX_STRETCH


def test_fast_acknowledgements_never_bring_it_below_the_configured_timeout() -> None:
    timer = AckTimer(3.0)
    for _ in range(20):
        timer.sample(0.05)
    assert timer.timeout_s == 3.0


def test_the_stretch_is_bounded_and_clock_steps_are_ignored() -> None:
    timer = AckTimer(3.0)
    timer.sample(-3600.0)
    assert timer.timeout_s == 3.0
    timer.sample(1000.0)
    assert timer.timeout_s == 3.0 * MAX_STRETCH


def test_the_timeout_doubles_while_nothing_is_measured_and_a_measurement_resets_it() -> None:
    timer = AckTimer(3.0)
    timer.timed_out()
    assert timer.timeout_s == 6.0
    for _ in range(5):
        timer.timed_out()
    assert timer.timeout_s == 3.0 * MAX_STRETCH
    timer.sample(1.0)
    assert timer.timeout_s == 3.0


def test_a_hub_that_acknowledges_after_20_s_gets_one_copy_per_reading_once_measured(tmp_path: Path) -> None:
    """An overloaded hub acknowledges each reading 20 s after its first send; the configured timeout is
    3 s. Early readings are resent (each resend is the timer learning), later ones are not resent before
    their acknowledgement arrives; with a fixed 3 s timeout every reading would be sent 3 times."""
    box, timer = Outbox(tmp_path / "outbox.db"), AckTimer(3.0)
    first_sent: dict[int, float] = {}
    copies: dict[int, int] = {}
    t = 1000.0
    for seq in range(1, 241):  # a reading every 0.5 s for two minutes; the agent polls as often
        box.add(1, seq, b"r")
        box.mark_sent([(1, seq)], t)
        first_sent[seq], copies[seq] = t, 1
        due = box.due_entries(t, timer.timeout_s)
        for e, s, _b, _t in due:
            box.mark_sent([(e, s)], t)
            copies[s] += 1
        if due:
            timer.timed_out()
        for s in [s for s, at in first_sent.items() if t - at >= 20.0]:  # the hub's acknowledgements
            sent = box.sent_once(1, [s])
            if sent:
                timer.sample(t - sent[0])
            box.remove(1, [s])
            del first_sent[s]
        t += 0.5
    assert max(copies[s] for s in range(1, 11)) > 1  # before anything was measured
    assert max(copies[s] for s in range(121, 241)) == 1  # the second minute: one copy each
    box.close()


def test_sent_once_reports_only_readings_published_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    for seq in (1, 2, 3):
        box.add(1, seq, b"r")
        box.mark_sent([(1, seq)], 100.0 + seq)
    box.mark_sent([(1, 2)], 200.0)  # resent: its acknowledgement may answer either copy
    assert box.sent_once(1, [1, 2, 3]) == [101.0, 103.0]
    assert box.sent_once(1, [3]) == [103.0] and box.sent_once(1, []) == []
    box.close()


def test_no_reading_waits_longer_than_the_longest_wait_between_sends(tmp_path: Path) -> None:
    """With the timer stretched to its bound, the outbox's doubling stops at the same bound (not 8 x it)."""
    box, timer = Outbox(tmp_path / "outbox.db"), AckTimer(3.0)
    for _ in range(5):
        timer.timed_out()
    box.add(1, 1, b"r")
    for _ in range(5):
        box.mark_sent([(1, 1)], 1000.0)
    assert timer.timeout_s == timer.longest_s == 24.0
    assert not box.due_entries(1023.9, timer.timeout_s, longest_s=timer.longest_s)
    assert box.due_entries(1024.1, timer.timeout_s, longest_s=timer.longest_s)
    box.close()
