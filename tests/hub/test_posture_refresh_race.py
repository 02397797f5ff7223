"""A refresh from the database never puts back a posture older than this process's own change.

The maintenance thread re-reads every posture (changes made by other hub processes) while request
threads apply attestations. Before the write lock, an appraisal that committed between the
refresh's read and its comparison was undone in memory: the tampered device's ``failed`` turned
back into the stale ``unverified`` until the next tick (seen in CI as the demo's tampered device
reported ``unverified``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import iotguard.hub.services.posture as posture_module
from tests.hub.conftest import HubParts


def _write_during(monkeypatch: pytest.MonkeyPatch, name: str, write: Callable[[], None]) -> list[threading.Thread]:
    """Make ``posture_module.<name>`` (a database read) start ``write`` on another thread right after
    it has read, and give that thread a second to finish before the read's result is used."""
    original = getattr(posture_module, name)
    threads: list[threading.Thread] = []

    def read_then_race(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if not threads:
            t = threading.Thread(target=write)
            threads.append(t)
            t.start()
            t.join(timeout=1.0)  # unguarded, the write lands now, between this read and its use
        return result

    monkeypatch.setattr(posture_module, name, read_then_race)
    return threads


def test_refresh_does_not_undo_an_attestation_committed_while_it_read(hub: HubParts,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    hub.agent("dev-1").close()
    service = hub.services.posture
    assert service.posture.require("dev-1").trust_tier == "unverified"
    threads = _write_during(monkeypatch, "load_posture", lambda: service.mark_tampered("dev-1"))
    service.refresh()
    threads[0].join(timeout=30)
    assert not threads[0].is_alive()
    assert service.posture.require("dev-1").trust_tier == "failed"


def test_reread_after_a_denial_does_not_undo_a_concurrent_change(hub: HubParts,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    hub.agent("dev-2").close()
    service = hub.services.posture
    threads = _write_during(monkeypatch, "load_device_posture", lambda: service.mark_tampered("dev-2"))
    service.reread("dev-2")
    threads[0].join(timeout=30)
    assert not threads[0].is_alive()
    assert service.posture.require("dev-2").trust_tier == "failed"
