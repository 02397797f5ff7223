"""amqtt's per-message PUBACK-timeout tracebacks become one warning a minute (a device that never
acknowledges must not be able to write a traceback per message into the hub's log)."""

from __future__ import annotations

import logging
import sys

import pytest

from iotguard.hub.broker import PubackTimeoutDigest


def _record(exc: BaseException | None, msg: str = "Task failed and will be skipped: <Task ...>") -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord("amqtt.broker", logging.ERROR, __file__, 1, msg, None, exc_info)


def test_puback_timeouts_are_counted_and_reported_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    digest = PubackTimeoutDigest(interval_s=60.0, clock=lambda: now[0])
    logger = logging.getLogger("tests.amqtt.broker")
    logger.addFilter(digest)
    try:
        with caplog.at_level(logging.WARNING, logger="tests.amqtt.broker"):
            for i in range(1000):
                now[0] = i * 0.1  # 100 s of misses, ten a second
                logger.handle(_record(TimeoutError(f"Timeout waiting for PUBACK for packet ID {i}")))
            logger.handle(_record(RuntimeError("a real broker failure")))
    finally:
        logger.removeFilter(digest)
    summaries = [r for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert digest.count == 1000
    assert len(summaries) == 2  # at 0 s and at 60 s
    assert summaries[0].getMessage().startswith("embedded broker: 1 QoS 1")
    assert summaries[1].getMessage().startswith("embedded broker: 600 QoS 1")
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in summaries)
    # Anything else amqtt reports passes untouched, traceback included.
    others = [r for r in caplog.records if r not in summaries]
    assert len(others) == 1 and others[0].exc_info is not None


def test_the_embedded_broker_installs_the_digest_once(embedded_hub: object) -> None:
    """A started embedded broker has put the digest on amqtt's logger (once, however many start)."""
    logger = logging.getLogger("amqtt.broker")
    assert sum(isinstance(f, PubackTimeoutDigest) for f in logger.filters) == 1
