"""A simulated fleet: N real agents in one process, plus attack hooks.

Every virtual device is a full :class:`~iotguard.agent.Agent` with its own
key store, enrollment, MQTT connection and outbox; the simulator only adds
sensor models, a scheduler and attacks (replay, forged tag, unknown device,
malformed and oversized payloads).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from iotguard.agent import Agent
from iotguard.clock import FixedClock
from iotguard.config import AgentConfig
from iotguard.crypto import get_suite
from iotguard.errors import MalformedError
from iotguard.privacy import ConsentState, load_contract
from iotguard.sim.delivery import reading_identity
from iotguard.sim.sensors import MODELS, SensorModel, make_sensor
from iotguard.wire import Reading, decode_reading, encode_envelope

__all__ = ["ATTACKS", "Fleet", "VirtualDevice"]

log = logging.getLogger(__name__)

#: Attack name -> the reason code the hub must reject it with.
ATTACKS: dict[str, str] = {
    "replay": "replay",
    "forged": "forged",
    "malformed": "malformed",
    "unknown_device": "unknown_device",
    "oversized": "malformed",
}

#: Registers a device and returns its enrollment code (the API or the registry).
Provisioner = Callable[[str, str], str]
#: Records a data subject's initial consent decisions for a device at the hub: (subject, device, purpose->granted).
ConsentRecorder = Callable[[str, str, dict[str, bool]], None]


@dataclass
class VirtualDevice:
    """One simulated device."""

    agent: Agent
    model: str
    sensor: SensorModel
    #: The data subject whose consent the device follows.
    subject: str = ""
    sent: dict[tuple[int, int], float] = field(default_factory=dict)
    #: Readings the device sealed, by purpose (what the device itself knows of its own data).
    sealed_by_purpose: Counter[str] = field(default_factory=Counter)


class Fleet:
    """N virtual devices publishing through a broker to a hub.

    Args:
        provision: Registers a device id and model, returns the enrollment code.
        hub_url: Hub API base URL (devices enroll over HTTPS, pinning the CA from their code).
        broker_url: ``mqtts://host:port`` (mTLS with each device's transport certificate).
        data_dir: Parent directory of every device's state.
        suites: Cipher suites to spread over the fleet (round robin).
        seed: Makes sensor values reproducible.
    """

    def __init__(self, provision: Provisioner, *, hub_url: str, broker_url: str, data_dir: str | Path,
                 suites: list[str] | None = None, seed: int = 1, ack_timeout_s: float = 10.0,
                 id_prefix: str = "sim", device_seconds_per_round: float = 60.0,
                 research_consent: float = 0.7, receipt_every: int = 10,
                 consent_recorder: ConsentRecorder | None = None) -> None:
        self.provision = provision
        self.hub_url = hub_url
        self.broker_url = broker_url
        self.dir = Path(data_dir)
        self.suites = suites or ["ascon-aead128", "chacha20-poly1305", "aes-128-gcm"]
        self.suites = [s for s in self.suites if _known(s)] or ["chacha20-poly1305"]
        self.seed = seed
        self.ack_timeout_s = ack_timeout_s
        self.id_prefix = id_prefix
        self.devices: list[VirtualDevice] = []
        #: Devices taken out of the schedule (:meth:`retire`): connected, no longer sampling.
        self.retired: list[VirtualDevice] = []
        # Simulated device time: each round is ``device_seconds_per_round`` of
        # sensor time, so the data contracts' per-purpose frequency limits
        # (seconds to hours) all show up in a short run.
        self.clock = FixedClock(datetime.now(tz=UTC))
        self.device_seconds_per_round = device_seconds_per_round
        self.research_consent = research_consent
        self.receipt_every = receipt_every
        self.rounds = 0
        self.withheld: Counter[str] = Counter()
        self.receipts_sent = 0
        self.consent_recorder = consent_recorder
        self.attacks: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        #: Genuine readings submitted (attacks not included).
        self.sent = 0
        #: (device_id, epoch, seq) of every genuine reading submitted.
        self.submitted: list[tuple[str, int, int]] = []
        #: Identity (device, body digest) of every genuine reading submitted; see :mod:`iotguard.sim.delivery`.
        self.sent_readings: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    # -- setup -----------------------------------------------------------

    def add_devices(self, n: int) -> None:
        """Register, enroll and connect ``n`` devices (models round robin)."""
        models = sorted(MODELS)
        start = len(self.devices)
        for i in range(start, start + n):
            model = models[i % len(models)]
            device_id = f"{self.id_prefix}-{model}-{i:05d}"
            suite = self.suites[i % len(self.suites)]
            cfg = AgentConfig(data_dir=str(self.dir / device_id), hub_url=self.hub_url,
                              broker_url=self.broker_url, suites=[suite], ack_timeout_s=self.ack_timeout_s)
            # Requests to the hub carry real time (they must be fresh); sensor time is simulated.
            agent = Agent(cfg, device_id)
            agent.enroll(self.provision(device_id, model))
            consent = self._consent(model, i)
            if self.consent_recorder is not None:
                # The hub holds the authoritative record; the device starts from the same decisions.
                self.consent_recorder(consent.subject_id, device_id,
                                      {p: d.granted for p, d in sorted(consent.decisions.items())})
            agent.attach_privacy(model, consent, self.clock, rng=random.Random(self.seed * 7919 + i))
            dev = VirtualDevice(agent, model, make_sensor(model, self.seed * 100_003 + i), consent.subject_id)
            agent.on_ack = self._acked(dev)
            agent.on_submit = self._recorded(dev)
            self.devices.append(dev)
        for dev in self.devices[start:]:
            dev.agent.connect()

    def _acked(self, dev: VirtualDevice) -> Callable[[int, list[int]], None]:
        def on_ack(epoch: int, seqs: list[int]) -> None:
            now = time.monotonic()
            with self._lock:
                for s in seqs:
                    t0 = dev.sent.pop((epoch, s), None)
                    if t0 is not None:
                        self.latencies_ms.append((now - t0) * 1000.0)

        return on_ack

    def _recorded(self, dev: VirtualDevice) -> Callable[[int, int, bytes], None]:
        device_id = dev.agent.device_id

        def on_submit(_epoch: int, _seq: int, body: bytes) -> None:
            try:
                purpose = decode_reading(body).purpose or ""
            except MalformedError:
                purpose = ""
            with self._lock:
                self.sent_readings.add(reading_identity(device_id, body))
                dev.sealed_by_purpose[purpose] += 1

        return on_submit

    # -- traffic ---------------------------------------------------------

    def _consent(self, model: str, i: int) -> ConsentState:
        """The simulated data subject's choices: every purpose but research, which a share refuses."""
        rng = random.Random(self.seed * 31 + i)
        state = ConsentState(f"subject-{self.id_prefix}-{i:05d}")
        now = self.clock.now()
        for purpose in sorted(load_contract(model).purposes):
            if purpose == "research" and rng.random() >= self.research_consent:
                state = state.withdraw(purpose, now)
            else:
                state = state.grant(purpose, now)
        return state

    def send_round(self) -> int:
        """Every device samples its sensor once; returns how many readings left the devices.

        Each sample passes the device's privacy pipeline: one reading per
        purpose that consent, frequency and budget allow (possibly none).
        """
        self.clock.advance(self.device_seconds_per_round)
        self.rounds += 1
        n = 0
        for dev in self.devices:
            n += self._submit(dev)
            if self.rounds % self.receipt_every == 0 and dev.agent.send_receipt():
                self.receipts_sent += 1
        return n

    def _submit(self, dev: VirtualDevice) -> int:
        t = self.clock.now().timestamp()
        seqs = dev.agent.collect(dev.sensor.sample(t), int(t * 1000))
        assert dev.agent.privacy is not None
        now = time.monotonic()
        with self._lock:
            self.withheld.update(dev.agent.privacy.refused.values())
            for seq in seqs:
                dev.sent[(dev.agent.sealer.epoch, seq)] = now
                self.submitted.append((dev.agent.device_id, dev.agent.sealer.epoch, seq))
            self.sent += len(seqs)
        return len(seqs)

    def flush_receipts(self) -> None:
        """Send the receipts of every device's outstanding batch (and retry the kept ones now)."""
        for dev in self.devices:
            if dev.agent.send_receipt(force=True):
                self.receipts_sent += 1

    def resend_due(self) -> int:
        return sum(dev.agent.resend_due() for dev in self.devices)

    def pending(self) -> int:
        """Readings not yet acknowledged end to end by the hub."""
        return sum(dev.agent.pending() for dev in self.devices)

    # -- attacks ---------------------------------------------------------

    def inject(self, attack: str, rng: random.Random | None = None) -> None:
        """Inject one attack message of the named kind (see :data:`ATTACKS`).

        Raises:
            KeyError: unknown attack name.
        """
        if attack not in ATTACKS:
            raise KeyError(f"unknown attack {attack!r}; known: {sorted(ATTACKS)}")
        rng = rng or random.Random(self.seed)
        dev = self.devices[rng.randrange(len(self.devices))]
        agent = dev.agent
        topic = agent.sealer.topic
        if attack == "replay":
            # Capture a genuine envelope on its way (it is stored once), then
            # send the same bytes again as an attacker would.
            self.clock.advance(self.device_seconds_per_round)
            while not self._submit(dev):
                self.clock.advance(self.device_seconds_per_round)
            envelope = agent.last_envelope
            time.sleep(0.5)
            agent.publish_raw(topic, envelope)
        elif attack == "forged":
            from iotguard.wire import encode_reading

            _seq, envelope = agent.sealer.seal(encode_reading(Reading(int(time.time() * 1000), {"x": 1.0}, "x")))
            envelope = envelope[:-1] + bytes((envelope[-1] ^ 0x01,))  # flip one tag bit
            agent.publish_raw(topic, envelope)
        elif attack == "malformed":
            agent.publish_raw(topic, b"\x86\x01\xff" + os.urandom(rng.randrange(1, 40)))
        elif attack == "oversized":
            # Above the hub's envelope limit (16 KiB) but below the broker's packet limit (64 KiB),
            # so it is the hub's parser that must refuse it.
            agent.publish_raw(topic, encode_envelope(1, agent.device_id, 1, 1, os.urandom(32_000)))
        elif attack == "unknown_device":
            # Under mTLS the broker lets a device publish only on its own topic (another
            # device's topic is refused there: tests/hub/test_broker_front.py), so the ghost
            # envelope travels on the sender's own topic and the hub must refuse the claimed id.
            ghost = f"ghost-{rng.randrange(10**6)}"
            suite = get_suite("chacha20-poly1305")
            agent.publish_raw(topic, encode_envelope(suite.suite_id, ghost, 1, 1, os.urandom(48)))
        self.attacks[ATTACKS[attack]] += 1

    def retire(self, device_id: str) -> VirtualDevice:
        """Take a device out of the schedule: it no longer samples, resends or sends receipts (its agent stays
        connected). Its readings stay in :attr:`sent_readings`; :meth:`pending` no longer counts it.

        Raises:
            KeyError: no scheduled device has that id.
        """
        dev = next((d for d in self.devices if d.agent.device_id == device_id), None)
        if dev is None:
            raise KeyError(device_id)
        self.devices.remove(dev)
        self.retired.append(dev)
        return dev

    def close(self) -> None:
        for dev in self.devices + self.retired:
            dev.agent.close()


def _known(suite: str) -> bool:
    try:
        get_suite(suite)
    except Exception:
        return False
    return True
