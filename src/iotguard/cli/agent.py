"""``iotguard agent``: run a device agent with a simulated sensor."""

from __future__ import annotations

import argparse
import signal
import threading
import time

from iotguard.cli._common import add_config_argument, config_from_args
from iotguard.errors import IotGuardError, StorageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from iotguard.sim.sensors import MODELS

    p = sub.add_parser("agent", help="run a device agent (enroll, seal, publish, buffer while offline)",
                       description="Run one device. The first run needs --enroll with the code printed by "
                       "'iotguard devices add'; state (keys, session, outbox) stays in --data-dir.")
    add_config_argument(p)
    p.add_argument("--device-id", required=True)
    p.add_argument("--enroll", metavar="CODE", help="one-time enrollment code (first run)")
    from iotguard.privacy.registry import available_models

    p.add_argument("--model", default="thermo-1", choices=sorted(set(MODELS) | set(available_models())),
                   help="device model: its data contract, and its simulated sensor if it has one")
    p.add_argument("--data-dir", help="agent state directory (overrides agent.data_dir)")
    p.add_argument("--hub-url", help="hub API URL (overrides agent.hub_url)")
    p.add_argument("--broker-url", help="mqtts://host:port (overrides agent.broker_url)")
    p.add_argument("--interval", type=float, help="seconds between readings (overrides agent.interval_s)")
    p.add_argument("--count", type=int, default=0, help="stop after this many samples (0: run until stopped)")
    p.add_argument("--health-interval", type=float, default=60.0, metavar="S",
                   help="seconds between signed health reports (CPU, memory, process set, listening ports, "
                   "traffic; 0: none; default 60)")
    p.add_argument("--subject", default="owner", help="data subject the readings are about (default: owner)")
    p.add_argument("--consent", default="", metavar="PURPOSES",
                   help="comma-separated purposes the owner consented to until the hub pushes consent "
                   "(purposes on another legal basis need none)")
    p.add_argument("--learn", metavar="RUN_ID", help="take part in this federated training run: train on "
                   "--learn-data (never sent), send protected updates, then fetch, verify and run the model")
    p.add_argument("--learn-data", metavar="NPZ", help="this device's training data: .npz with arrays x, y")
    p.add_argument("--learn-accepts", default="", metavar="SCHEME[,SCHEME...]",
                   help="update compressions this device can send (none, q8, topk, topk+q8; default: all); "
                   "the hub picks the first its round offers")
    p.add_argument("--learn-max-update-bytes", type=int, default=0, metavar="N",
                   help="most bytes one model update may take on this device's link (0: no limit); the hub "
                   "picks a compression whose update fits")
    p.add_argument("--infer-field", default="", metavar="FIELD",
                   help="report the fetched model's outputs on the local data as this data-contract field")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iotguard.agent import Agent
    from iotguard.privacy import ConsentState
    from iotguard.sim.sensors import make_sensor

    cfg = config_from_args(args).agent
    for name, attr in (("data_dir", "data_dir"), ("hub_url", "hub_url"), ("broker_url", "broker_url"),
                       ("interval", "interval_s")):
        value = getattr(args, name)
        if value:
            setattr(cfg, attr, value)
    clock = None
    if cfg.unsafe_clock_offset_file:
        from iotguard.clock import OffsetFileClock

        print(f"UNSAFE: the agent's clock is moved by the offset in {cfg.unsafe_clock_offset_file} "
              "(agent.unsafe_clock_offset_file, fault injection only)", flush=True)
        clock = OffsetFileClock(cfg.unsafe_clock_offset_file)
    agent = Agent(cfg, args.device_id, clock=clock)
    if not agent.enrolled:
        if not args.enroll:
            print("iotguard agent: device is not enrolled; pass --enroll CODE", flush=True)
            return 2
        agent.enroll(args.enroll)
        print(f"enrolled {args.device_id} (suite {agent.sealer.suite.name}, epoch {agent.sealer.epoch})",
              flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    consent = ConsentState(args.subject)
    for purpose in filter(None, (p.strip() for p in args.consent.split(","))):
        consent = consent.grant(purpose, agent.clock.now())
    agent.attach_privacy(args.model, consent)
    agent.connect()
    attester = None
    if cfg.boot_images_dir:  # measured boot, then attest at start, on a schedule, and when challenged
        from iotguard.agent.attester import boot_from_config

        attester = agent.attester = boot_from_config(cfg, agent.keystore)
    next_attest = time.monotonic()
    from iotguard.agent.update_schedule import agent_updates

    updates = agent_updates(agent, args.model)  # None: no trusted firmware root or slots (not updatable)
    health = _HealthReporter(args.health_interval, cfg.broker_url)
    from iotguard.sim.sensors import MODELS

    sensor = make_sensor(args.model, hash(args.device_id) & 0xFFFF) if args.model in MODELS else None
    learning = None
    if args.learn:
        from pathlib import Path

        from iotguard.agent.learning_loop import LearningLoop, load_local_data

        if not args.learn_data:
            print("iotguard agent: --learn needs --learn-data", flush=True)
            return 2
        learning = LearningLoop(agent, args.learn, load_local_data(Path(args.learn_data)), args.infer_field,
                                device_model=args.model or "",
                                accepts=[a.strip() for a in args.learn_accepts.split(",")] if args.learn_accepts
                                else None, max_update_bytes=args.learn_max_update_bytes)
    samples = sent = refused = 0
    while not stop.is_set() and (args.count == 0 or samples < args.count):
        if attester is not None and time.monotonic() >= next_attest:
            next_attest = time.monotonic() + cfg.attest_interval_s
            try:
                result = agent.attest(attester)
                print(f"attestation: {result['status']} (trust tier {result['trust_tier']})", flush=True)
            except IotGuardError as exc:
                print(f"attestation refused: {exc}", flush=True)
        if updates is not None:
            update = updates.run_if_due()
            if update is not None and update.outcome != "none":
                print(f"firmware update: {update.outcome} {update.reason} (running {update.version})", flush=True)
        if learning is not None:
            learning.step()
        t = agent.clock.now().timestamp()  # the device's wall clock, as its sensor stamps readings
        try:
            fresh = len(agent.collect(sensor.sample(t), int(t * 1000))) if sensor is not None else 0
        except StorageError as exc:  # volume full: refused at capture, what is on disk is kept
            refused += 1
            fresh = 0
            print(f"reading refused at capture: {exc.code}", flush=True)
        sent += fresh
        health.count(fresh, len(agent.last_envelope))
        health.report_if_due(agent)
        samples += 1
        if samples % 10 == 0:
            agent.send_receipt()
            try:
                agent.maybe_renew()
            except IotGuardError as exc:  # refused (quarantined, expired...): keep running, say why
                print(f"certificate renewal refused: {exc}", flush=True)
        agent.resend_due()
        stop.wait(cfg.interval_s)
    agent.send_receipt()
    deadline = time.monotonic() + cfg.ack_timeout_s
    while agent.pending() and time.monotonic() < deadline and not stop.is_set():
        agent.resend_due()
        time.sleep(0.1)
    print(f"samples {samples}, readings sent {sent}, refused at capture {refused}, "
          f"unacknowledged {agent.pending()} (kept on disk)", flush=True)
    agent.close()
    return 0


class _HealthReporter:
    """Sends the agent's signed health report every ``interval_s`` (counting messages and bytes in between)."""

    def __init__(self, interval_s: float, broker_url: str) -> None:
        from iotguard.agent.health import HealthSampler

        self.interval_s = interval_s
        self.destination = broker_url.split("://", 1)[-1][:80]
        self.sampler = HealthSampler()
        self.next = time.monotonic() + interval_s
        self.messages = 0
        self.bytes = 0

    def count(self, messages: int, size: int) -> None:
        self.messages += messages
        self.bytes += size * messages

    def report_if_due(self, agent: object) -> None:
        import httpx

        from iotguard.agent import Agent
        from iotguard.detection import encode_health_report

        if self.interval_s <= 0 or time.monotonic() < self.next or not isinstance(agent, Agent):
            return
        self.next = time.monotonic() + self.interval_s
        report = self.sampler.sample(messages=self.messages, outbound={self.destination: self.bytes})
        self.messages = self.bytes = 0
        try:
            r = agent.signed_request("report_health", "/v1/device-health", {"metrics": encode_health_report(report)})
        except (httpx.HTTPError, IotGuardError) as exc:  # skipped; the next report counts afresh
            print(f"health report not sent: {type(exc).__name__}", flush=True)
            return
        if r.status_code != 200:
            print(f"health report refused: HTTP {r.status_code}", flush=True)
