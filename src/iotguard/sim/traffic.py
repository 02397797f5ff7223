"""Simulated network behaviour of devices: benign traffic per model and attacks.

Each generator returns flow records (:class:`~iotguard.detection.Flow`),
or the hub-side events a behaviour shows (failed logins, sessions), for
simulated devices, reproducibly from a seed. Benign traffic follows the
device model: telemetry to the hub on the model's period (with jitter),
DNS and NTP, and a daily-ish firmware check. Attacks follow what the real
ones do on the wire:

* ``mirai_scan`` — Mirai-style telnet scanning: SYNs to random public
  addresses on 23 and 2323, almost all unanswered;
* ``syn_flood`` / ``udp_flood`` — many connections per second to one victim;
* ``cnc_beacon`` — small connections to a command-and-control server on a
  fixed timer;
* ``slow_exfiltration`` — occasional large uploads to a new destination;
* ``cloned_device`` — the same identity active from a second address;
* ``credential_guessing`` — repeated failed logins against the hub API;
* ``external_probing`` / ``telnet_guessing`` — the device attacked from the
  Internet: many scanners each trying a port or two of it (mostly refused
  or unanswered), optionally one sweeping its ports; one guesser logging in
  to its telnet over and over.

:func:`firmware_change` is the benign counterpart for false-positive tests:
every device of a model changes behaviour at once after an update.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from iotguard.detection import AuthFailure, Flow, SessionSeen

__all__ = [
    "HUB_ADDRESS",
    "PROFILES",
    "Scenario",
    "SimDevice",
    "TrafficProfile",
    "benign_traffic",
    "cloned_device",
    "cnc_beacon",
    "credential_guessing",
    "external_probing",
    "firmware_change",
    "make_fleet",
    "mirai_scan",
    "slow_exfiltration",
    "syn_flood",
    "telnet_guessing",
    "udp_flood",
]

HUB_ADDRESS = "10.0.0.1"
_DNS = "10.0.0.53"
_NTP = "10.0.0.123"
_UPDATES = "10.0.0.80"


@dataclass(frozen=True)
class TrafficProfile:
    """How a device model talks when it is healthy.

    Attributes:
        period_s: Telemetry period.
        jitter: Relative jitter of the period.
        up_bytes: Range of bytes sent per telemetry connection.
        down_bytes: Range of bytes received.
        port: Hub port (MQTT over TLS).
    """

    period_s: float
    jitter: float
    up_bytes: tuple[int, int]
    down_bytes: tuple[int, int]
    port: int = 8883


#: Benign behaviour per device model (the models of :mod:`iotguard.sim.sensors`).
PROFILES: dict[str, TrafficProfile] = {
    "thermo": TrafficProfile(30.0, 0.2, (300, 600), (60, 120)),
    "motion": TrafficProfile(10.0, 0.6, (200, 400), (60, 100)),
    "meter": TrafficProfile(60.0, 0.1, (800, 1600), (80, 160)),
    "wearable": TrafficProfile(5.0, 0.4, (400, 1200), (60, 200)),
    "tracker": TrafficProfile(15.0, 0.3, (250, 500), (60, 120)),
}


@dataclass(frozen=True)
class SimDevice:
    """A simulated device on the network."""

    device_id: str
    model: str
    address: str
    segment: str


@dataclass
class Scenario:
    """What a behaviour produced: flows (with ground truth) and hub-side events."""

    name: str
    flows: list[Flow] = field(default_factory=list)
    malicious: list[bool] = field(default_factory=list)
    sessions: list[SessionSeen] = field(default_factory=list)
    auth_failures: list[AuthFailure] = field(default_factory=list)

    def add(self, flows: list[Flow], malicious: bool) -> None:
        self.flows.extend(flows)
        self.malicious.extend([malicious] * len(flows))

    def merged(self, other: Scenario) -> Scenario:
        """Both scenarios' records, flows sorted by time."""
        out = Scenario(f"{self.name}+{other.name}")
        pairs = sorted(zip(self.flows + other.flows, self.malicious + other.malicious, strict=True),
                       key=lambda p: p[0].ts)
        out.flows = [p[0] for p in pairs]
        out.malicious = [p[1] for p in pairs]
        out.sessions = sorted(self.sessions + other.sessions, key=lambda s: s.ts)
        out.auth_failures = sorted(self.auth_failures + other.auth_failures, key=lambda a: a.ts)
        return out


def make_fleet(per_model: int = 4, segments: int = 2, models: tuple[str, ...] | None = None) -> list[SimDevice]:
    """Devices ``sim-<model>-<n>`` spread round robin over segments ``seg-<k>``, addresses in 10.(20+k).0.0/16."""
    out: list[SimDevice] = []
    for m, model in enumerate(models or tuple(PROFILES)):
        for i in range(per_model):
            index = m * per_model + i
            seg = index % segments
            host = 10 + index // segments
            out.append(SimDevice(f"sim-{model}-{i}", model, f"10.{20 + seg}.{host // 250}.{host % 250 + 1}",
                                 f"seg-{seg}"))
    return out


def _flow(ts: float, src: str, dst: str, dport: int, proto: str, state: str, up: int, down: int,
          duration: float, rng: random.Random, service: str = "") -> Flow:
    established = state in ("SF", "S1", "S2", "S3")
    return Flow(ts=ts, orig_h=src, orig_p=rng.randint(32768, 60999) if proto != "icmp" else 0, resp_h=dst,
                resp_p=dport, proto=proto, duration=duration, orig_bytes=up, resp_bytes=down if established else 0,
                conn_state=state, orig_pkts=max(1, up // 500 + (3 if established else 1)),
                resp_pkts=(down // 500 + 2) if established else (1 if state == "REJ" else 0), service=service)


def benign_traffic(devices: list[SimDevice], start: float, seconds: float, seed: int = 1,
                   profiles: dict[str, TrafficProfile] | None = None) -> Scenario:
    """Healthy traffic of ``devices`` for ``seconds`` from ``start``."""
    profiles = profiles or PROFILES
    rng = random.Random(seed)
    out = Scenario("benign")
    flows: list[Flow] = []
    for dev in devices:
        p = profiles[dev.model]
        t = start + rng.uniform(0, p.period_s)
        while t < start + seconds:
            flows.append(_flow(t, dev.address, HUB_ADDRESS, p.port, "tcp", "SF", rng.randint(*p.up_bytes),
                               rng.randint(*p.down_bytes), rng.uniform(0.05, 0.3), rng, "ssl"))
            if rng.random() < 0.05:
                flows.append(_flow(t - 0.05, dev.address, _DNS, 53, "udp", "SF", rng.randint(30, 60),
                                   rng.randint(60, 200), 0.01, rng, "dns"))
            if rng.random() < 0.01:
                flows.append(_flow(t + 0.5, dev.address, _NTP, 123, "udp", "SF", 48, 48, 0.02, rng, "ntp"))
            if rng.random() < 0.003:
                flows.append(_flow(t + 1.0, dev.address, _UPDATES, 443, "tcp", "SF", rng.randint(500, 900),
                                   rng.randint(2000, 6000), rng.uniform(0.2, 1.0), rng, "ssl"))
            t += p.period_s * (1 + rng.uniform(-p.jitter, p.jitter))
    flows.sort(key=lambda f: f.ts)
    out.add(flows, False)
    return out


def _public(rng: random.Random) -> str:
    while True:
        a = rng.randint(1, 223)
        if a not in (10, 100, 127, 169, 172, 192):
            return f"{a}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def mirai_scan(device: SimDevice, start: float, seconds: float, rate: float = 40.0, seed: int = 2) -> Scenario:
    """Telnet scanning of random public addresses at ``rate`` SYNs per second."""
    rng = random.Random(seed)
    out = Scenario("mirai_scan")
    flows: list[Flow] = []
    t = start
    while t < start + seconds:
        port = 23 if rng.random() < 0.9 else 2323
        r = rng.random()
        state = "S0" if r < 0.9 else ("REJ" if r < 0.98 else "SF")
        flows.append(_flow(t, device.address, _public(rng), port, "tcp", state, 0 if state != "SF" else 40,
                           30, 0.0 if state == "S0" else 0.2, rng, "telnet" if state == "SF" else ""))
        t += rng.expovariate(rate)
    out.add(flows, True)
    return out


def syn_flood(device: SimDevice, victim: str, start: float, seconds: float, rate: float = 200.0,
              seed: int = 3) -> Scenario:
    """Half-open TCP connections to ``victim``:80 at ``rate`` per second."""
    rng = random.Random(seed)
    out = Scenario("syn_flood")
    n = int(seconds * rate)
    out.add([_flow(start + i / rate, device.address, victim, 80, "tcp", "S0", 0, 0, 0.0, rng) for i in range(n)], True)
    return out


def udp_flood(device: SimDevice, victim: str, start: float, seconds: float, rate: float = 200.0,
              seed: int = 4) -> Scenario:
    """Large UDP datagrams to random ports of ``victim`` at ``rate`` per second."""
    rng = random.Random(seed)
    out = Scenario("udp_flood")
    n = int(seconds * rate)
    out.add([_flow(start + i / rate, device.address, victim, rng.randint(1, 65535), "udp", "S0",
                   1400, 0, 0.0, rng) for i in range(n)], True)
    return out


def cnc_beacon(device: SimDevice, start: float, seconds: float, server: str = "203.0.113.66", port: int = 6667,
               period_s: float = 20.0, seed: int = 5) -> Scenario:
    """Check-ins to a command-and-control server every ``period_s`` (+- 1 %)."""
    rng = random.Random(seed)
    out = Scenario("cnc_beacon")
    flows: list[Flow] = []
    t = start
    while t < start + seconds:
        flows.append(_flow(t, device.address, server, port, "tcp", "SF", rng.randint(40, 60), rng.randint(20, 40),
                           0.1, rng))
        t += period_s * (1 + rng.uniform(-0.01, 0.01))
    out.add(flows, True)
    return out


def slow_exfiltration(device: SimDevice, start: float, seconds: float, sink: str = "198.51.100.23",
                      period_s: float = 120.0, chunk_bytes: int = 250_000, seed: int = 6) -> Scenario:
    """Uploads of ``chunk_bytes`` to ``sink``:443 every ``period_s`` on average."""
    rng = random.Random(seed)
    out = Scenario("slow_exfiltration")
    flows: list[Flow] = []
    t = start + rng.uniform(0, period_s)
    while t < start + seconds:
        size = int(chunk_bytes * rng.uniform(0.8, 1.2))
        flows.append(_flow(t, device.address, sink, 443, "tcp", "SF", size, rng.randint(200, 400),
                           rng.uniform(2.0, 6.0), rng, "ssl"))
        t += rng.expovariate(1 / period_s)
    out.add(flows, True)
    return out


def cloned_device(device: SimDevice, clone_address: str, start: float, seconds: float,
                  period_s: float = 10.0) -> Scenario:
    """The device and its clone both active, each seen every ``period_s``."""
    out = Scenario("cloned_device")
    t = start
    while t < start + seconds:
        out.sessions.append(SessionSeen(t, device.device_id, device.address))
        out.sessions.append(SessionSeen(t + period_s / 2, device.device_id, clone_address))
        t += period_s
    return out


def credential_guessing(attacker: str, start: float, attempts: int = 40, rate: float = 2.0,
                        seed: int = 7) -> Scenario:
    """Failed logins against the hub API with default credentials, and their flows."""
    rng = random.Random(seed)
    out = Scenario("credential_guessing")
    names = ("admin", "root", "user", "support", "operator", "guest")
    flows: list[Flow] = []
    for i in range(attempts):
        t = start + i / rate
        out.auth_failures.append(AuthFailure(t, attacker, names[i % len(names)]))
        flows.append(_flow(t, attacker, HUB_ADDRESS, 443, "tcp", "SF", rng.randint(300, 500), rng.randint(200, 300),
                           0.05, rng, "ssl"))
    out.add(flows, True)
    return out


#: Ports Internet scanners try on an exposed device: remote logins, SMB, web, MS SQL, adb, common backdoors.
_PROBED_PORTS = (23, 22, 2323, 445, 80, 81, 8080, 1433, 5555, 7547, 1337, 7000)


def external_probing(device: SimDevice, start: float, seconds: float, rate: float = 0.5, sweep_ports: int = 0,
                     seed: int = 9) -> Scenario:
    """Internet scanners probing ``device``: a new public source every ``1 / rate`` s on average,
    each trying one to three ports (or an ICMP echo), refused (``REJ``) or unanswered (``S0``); with
    ``sweep_ports``, one more source tries that many ports of the device within a minute."""
    rng = random.Random(seed)
    out = Scenario("external_probing")
    flows: list[Flow] = []
    t = start + rng.expovariate(rate)
    while t < start + seconds:
        source = _public(rng)
        for k in range(rng.randint(1, 3)):
            if rng.random() < 0.1:
                flows.append(_flow(t + k, source, device.address, 8, "icmp", "S0", 0, 0, 0.0, rng))
            else:
                state = "REJ" if rng.random() < 0.6 else "S0"
                flows.append(_flow(t + k * rng.uniform(0.5, 3.0), source, device.address,
                                   rng.choice(_PROBED_PORTS), "tcp", state, 0, 0, 0.0, rng))
        t += rng.expovariate(rate)
    if sweep_ports:
        sweeper = _public(rng)
        ports = rng.sample(range(1, 10000), sweep_ports)
        flows += [_flow(start + i * 60.0 / sweep_ports, sweeper, device.address, port, "tcp", "REJ", 0, 0, 0.0, rng)
                  for i, port in enumerate(ports)]
    flows.sort(key=lambda f: f.ts)
    out.add(flows, True)
    return out


def telnet_guessing(device: SimDevice, attacker: str, start: float, attempts: int = 60, rate: float = 0.5,
                    seed: int = 10) -> Scenario:
    """``attacker`` (an Internet address) logging in to the telnet service of ``device`` again and again:
    one established connection per guess, ``rate`` per second on average (each waiting for the last one's
    answer, so not on a timer), a few dozen bytes each way."""
    rng = random.Random(seed)
    out = Scenario("telnet_guessing")
    flows: list[Flow] = []
    t = start
    for _ in range(attempts):
        flows.append(_flow(t, attacker, device.address, 23, "tcp", "SF", rng.randint(20, 40), rng.randint(40, 80),
                           rng.uniform(0.5, 2.0), rng, "telnet"))
        t += rng.expovariate(rate)
    out.add(flows, True)
    return out


def firmware_change(devices: list[SimDevice], model: str, start: float, seconds: float,
                    seed: int = 8) -> Scenario:
    """Benign: after an update every ``model`` device reports 4x as often with bigger readings."""
    base = PROFILES[model]
    changed = dict(PROFILES)
    changed[model] = TrafficProfile(base.period_s / 4, base.jitter, (base.up_bytes[0] * 3, base.up_bytes[1] * 3),
                                    base.down_bytes, base.port)
    scenario = benign_traffic([d for d in devices if d.model == model], start, seconds, seed, changed)
    scenario.name = "firmware_change"
    return scenario
