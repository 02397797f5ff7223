"""Fixtures for the privacy tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

import pytest

from iotguard.clock import FixedClock
from iotguard.privacy import (
    ConsentState,
    DataContract,
    InMemoryLedgerStore,
    PrivacyLossLedger,
    PrivacyPipeline,
    PseudonymKeyring,
    load_contract,
)

ROOT = bytes(range(32))


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def make_pipeline(clock: FixedClock) -> Callable[..., PrivacyPipeline]:
    def make(
        model: str,
        *grants: str,
        contract: DataContract | None = None,
        budget: float | None = None,
        device_id: str = "dev-1",
    ) -> PrivacyPipeline:
        c = contract or load_contract(model)
        state = ConsentState("alice")
        for p in grants:
            state = state.grant(p, clock.now())
        ledger = PrivacyLossLedger(
            InMemoryLedgerStore(), c.budget_epsilon if budget is None else budget, c.budget_period
        )
        return PrivacyPipeline(
            c,
            state,
            PseudonymKeyring(ROOT, c.pseudonym_rotation),
            ledger,
            clock,
            device_id=device_id,
            rng=random.Random(1),
        )

    return make


HOUR = timedelta(hours=1).total_seconds()
