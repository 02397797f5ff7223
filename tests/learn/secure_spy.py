"""Instruments a hub and its learning agents for the secure-learning tests: every request the hub verified, every
update a device trained, and every integer vector (before and after its noise) a device encoded for secure
aggregation; :meth:`UpdateSpy.leaked` says whether any of those updates reached the hub in any clear form."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2
import numpy as np
import pytest

from iotguard.agent import Agent
from iotguard.agent import learning as agent_learning
from iotguard.agent.learning import LearningParticipant
from iotguard.hub.compose import HubServices
from iotguard.hub.policy_store import save_posture
from iotguard.identity import VerifiedRequest
from iotguard.learn.distributed import discrete_gaussian
from tests.hub.conftest import HubParts


def blobs(value: Any) -> Iterator[bytes]:
    """Every byte string in a request body, CBOR messages opened."""
    if isinstance(value, bytes | bytearray):
        yield bytes(value)
        try:
            inner = cbor2.loads(bytes(value))
        except (cbor2.CBORDecodeError, ValueError, RecursionError):
            inner = None
        yield from blobs(inner)
    elif isinstance(value, dict):
        for v in value.values():
            yield from blobs(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from blobs(v)


@dataclass
class UpdateSpy:
    """What the devices handed the hub (``seen``) and what they must never have handed it in clear."""

    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    clear: list[np.ndarray] = field(default_factory=list)
    updates: list[np.ndarray] = field(default_factory=list)

    def capture(self, learners: Iterable[LearningParticipant], monkeypatch: pytest.MonkeyPatch) -> None:
        """Record every update these learners train."""
        for lp in learners:
            assert lp._participant is not None
            train_once = lp._participant.train

            def capture(*args: Any, _train: Any = train_once) -> Any:
                u = _train(*args)
                self.updates.append(u.vector.copy())
                return u

            monkeypatch.setattr(lp._participant, "train", capture)

    def leaked(self) -> bool:
        """Whether any verified request holds a trained update (f8, f4) or an encoded integer vector (u4)."""
        found = [b for _, body in self.seen for b in blobs(body)]
        needles = [u.astype(dt).tobytes()[:64] for u in self.updates for dt in ("<f8", "<f4")]
        needles += [(c % (1 << 32)).astype(dt).tobytes()[:64] for c in self.clear for dt in ("<u4", ">u4")]
        return any(n in b for n in needles for b in found)


def instrument(services: HubServices, monkeypatch: pytest.MonkeyPatch) -> UpdateSpy:
    """Spy on every request the hub's device plane verifies and on every device's noise step."""
    spy = UpdateSpy()
    verify = services.plane.verify

    def spying(action: str, wire: Any, client: str) -> VerifiedRequest:
        req = verify(action, wire, client)
        spy.seen.append((action, dict(req.body)))
        return req

    def recording_noise(values: list[int], std: float) -> list[int]:
        noised = discrete_gaussian(values, std)
        spy.clear.extend([np.asarray(values, np.int64), np.asarray(noised, np.int64)])
        return noised

    monkeypatch.setattr(services.plane, "verify", spying)
    monkeypatch.setattr(agent_learning, "discrete_gaussian", recording_noise)
    return spy


def verified_agents(hub: HubParts, count: int) -> list[Agent]:
    """``count`` enrolled agents ``dev-0`` .. whose posture is affirming (they may take part in training runs)."""
    services = hub.services
    agents = [hub.agent(f"dev-{i}") for i in range(count)]
    save_posture(hub.store.engine, [services.posture.posture.update(a.device_id, trust_tier="verified")
                                    for a in agents], now=services.clock.now())
    return agents
