"""The engine's decision counts: summed over threads, bounded labels."""

from __future__ import annotations

import threading

from iotguard.policy.decision_counts import DecisionCounts
from iotguard.policy.model import AccessRequest, Decision


def test_counts_from_many_threads_are_summed_and_unknown_actions_are_other() -> None:
    counts = DecisionCounts()
    publish = AccessRequest("Device", "dev-1", "publish", "Topic", "t/dev-1")
    odd = AccessRequest("Operator", "alice", "dev-1-specific-name", "Hub", "hub")
    allow, deny = Decision(True, "allow"), Decision(False, "deny")

    def work() -> None:
        for _ in range(1000):
            counts.add(publish, allow)
        counts.add_many([(odd, deny)] * 10)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts.snapshot() == {("device", "publish", "allow"): 4000, ("operator", "other", "deny"): 40}
