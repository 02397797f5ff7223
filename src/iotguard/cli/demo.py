"""``iotguard demo``: broker, hub and a simulated fleet in one command."""

from __future__ import annotations

import argparse
import json
import random
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from iotguard.hub.service import Hub
    from iotguard.sim import Fleet
    from iotguard.sim.attestation import FleetFirmware
    from iotguard.sim.demo_detection import DetectionStep

#: Fewest devices for the detection step: the default playbook quarantines at most 10 % of a segment by itself,
#: and the tampered device already holds one of those places.
DETECT_MIN_DEVICES = 18
#: Fewest devices for the analytics step: a secure-aggregation round needs three, the DP query an asset tracker
#: (the fourth model the fleet enrolls).
ANALYTICS_MIN_DEVICES = 4


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run broker, hub and a simulated fleet with injected attacks",
                       description="Start the embedded broker, a hub (SQLite) and N simulated devices that "
                       "enroll, attest and send sealed readings; inject a replay, a forged, a malformed, an "
                       "unknown-device and an oversized message and a device with a tampered kernel; mid-run, "
                       "turn one device into a telnet scanner that a network sensor reports and the hub "
                       "quarantines; after sending, run private analytics over the fleet (secure aggregation "
                       "with dropouts, a homomorphic sum, central-DP queries against the privacy ledger); "
                       "print a summary. Exits non-zero when a check fails.")
    p.add_argument("--devices", type=int, default=50, help="simulated devices (default %(default)s)")
    p.add_argument("--seconds", type=float, default=15.0, help="how long devices send (default %(default)s)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between sensor samples per device")
    p.add_argument("--device-seconds", type=float, default=60.0,
                   help="simulated device time per sample (data contracts limit how often each purpose collects)")
    p.add_argument("--suites", default="ascon-aead128,chacha20-poly1305,aes-128-gcm",
                   help="cipher suites spread over the fleet (comma-separated)")
    p.add_argument("--data-dir", help="keep hub and device state here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-analytics", dest="analytics", action="store_false",
                   help="skip private analytics (after sending: a secure-aggregation round over the devices with a "
                   "third dropping out, a homomorphic sum opened by an independent decryptor's key share, a "
                   f"central-DP query and one the privacy ledger refuses; needs at least {ANALYTICS_MIN_DEVICES} "
                   "devices)")
    p.add_argument("--no-detect", dest="detect", action="store_false",
                   help="skip detection and response (a network sensor reports the fleet's flows, the start of "
                   "the hub's learning window; mid-run one device turns into a telnet scanner, is alerted on, "
                   f"quarantined and cut off at the broker; needs at least {DETECT_MIN_DEVICES} devices)")
    p.add_argument("--update", action="store_true",
                   help="then publish firmware releases (TUF) and roll them out in stages over the device channel: "
                   "a broken one stops by itself at its first cohort, a good one reaches the whole fleet")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    if not s:
        return {"p50": 0.0, "p99": 0.0}
    return {"p50": round(s[int(0.5 * (len(s) - 1))], 2), "p99": round(s[int(0.99 * (len(s) - 1))], 2)}


def _tier_table(tiers: dict[str, str], per_line: int = 3) -> list[str]:
    """``device  tier`` cells, a few per line."""
    cells = [f"{device:<28} {tier:<10}" for device, tier in tiers.items()]
    return ["  ".join(cells[i:i + per_line]).rstrip() for i in range(0, len(cells), per_line)]


def _tampered_device(hub: Hub, fleet: Fleet, firmware: FleetFirmware, root: Path) -> dict[str, Any]:
    """Enroll one more device whose secure boot is bypassed and whose kernel carries an implant; attest it,
    then check it is cut off: its next reading is refused at ingest and the broker ACL has no grant for it."""
    from iotguard.agent import Agent
    from iotguard.config import AgentConfig
    from iotguard.hub.ingest import Incoming
    from iotguard.sim.attestation import boot_and_attest
    from iotguard.wire import Reading, encode_reading

    device_id = f"{fleet.id_prefix}-tampered-00000"
    agent = Agent(AgentConfig(data_dir=str(root / "devices" / device_id), hub_url=fleet.hub_url,
                              broker_url=fleet.broker_url, suites=[fleet.suites[0]]), device_id)
    try:
        agent.enroll(str(hub.lifecycle.add_device(device_id, fleet.devices[0].model)))
        result = boot_and_attest(agent, firmware.tampered(root / "tampered-release"), firmware.public_key,
                                 unsafe_allow_unverified=True)
        _s, env = agent.sealer.seal(encode_reading(Reading(int(time.time() * 1000), {"value": 1.0}, "telemetry")))
        ingest = hub.processor.process([Incoming(agent.sealer.topic, env)])
    finally:
        agent.close()
    return {"device": device_id, "status": result["status"], "trust_tier": result["trust_tier"],
            "reasons": result["reasons"],
            "ingest_refused": ingest.stored == 0 and ingest.rejected.get("policy_denied", 0) == 1,
            "broker_acl_dropped": f"/{device_id}/telemetry" not in hub.services.posture.broker_acl()}


#: Operator tokens this demo run issued (token ids); revoked when it ends, so a ``--data-dir`` keeps none usable.
_ISSUED: list[str] = []


def _operator(hub: Hub, role: str) -> httpx.Client:
    """An HTTPS client of the hub's API with a new operator token of ``role`` (as ``iotguard tokens create``)."""
    import httpx

    from iotguard.tls import client_context

    secret = hub.store.create_api_token(f"demo-{role}", role, now=hub.services.clock.now())
    _ISSUED.append(hub.store.authenticate_api_token(secret).token_id)
    return httpx.Client(base_url=hub.api_url, headers={"Authorization": f"Bearer {secret}"},
                        verify=client_context(hub.ca_file), timeout=60)


def _detection_setup(hub: Hub, fleet: Fleet, firmware: FleetFirmware, root: Path,
                     say: Callable[[str], None]) -> DetectionStep:
    """Enroll and attest a network sensor, write the fleet's address inventory, start the detector's learning."""
    from iotguard.hub.services.sensing import SENSOR_MODEL
    from iotguard.sim.attestation import boot_and_attest
    from iotguard.sim.demo_detection import SECURITY_ROLE, DetectionStep

    step = DetectionStep(hub, fleet, _operator(hub, SECURITY_ROLE), root / "devices", f"{fleet.id_prefix}-sensor-00000",
                         lambda device_id, model: str(hub.lifecycle.add_device(device_id, model)))
    firmware.register(hub.services.attestation, {SENSOR_MODEL})
    status = boot_and_attest(step.sensor, firmware.images, firmware.public_key)["status"]
    say(f"network sensor {step.sensor.device_id} enrolled (model {SENSOR_MODEL}), attested {status}")
    step.learn(say)
    return step


def _analytics_step(hub: Hub, fleet: Fleet, say: Callable[[str], None]) -> dict[str, Any]:
    from iotguard.sim.demo_analytics import ANALYST_ROLE, LEDGER_ROLE, run_analytics

    with _operator(hub, ANALYST_ROLE) as api, _operator(hub, LEDGER_ROLE) as ledger:
        return _step("analytics", lambda: run_analytics(api, ledger, fleet, say), say)


def _attacks(hub: Hub, fleet: Fleet, firmware: FleetFirmware, root: Path, rng: random.Random,
             say: Callable[[str], None]) -> dict[str, Any]:
    """Inject the forged, replayed and malformed readings and the tampered kernel; the tampered device's summary."""
    for attack in ("replay", "forged", "malformed", "unknown_device", "oversized"):
        fleet.inject(attack, rng)
    say("injected: replay, forged tag, malformed, unknown device, oversized")
    tampered = _tampered_device(hub, fleet, firmware, root)
    say(f"injected: tampered kernel on {tampered['device']} -> {tampered['status']} "
        f"({', '.join(tampered['reasons'])}); ingest refused: {tampered['ingest_refused']}, "
        f"telemetry dropped from broker ACL: {tampered['broker_acl_dropped']}")
    return tampered


def _step(name: str, run: Callable[[], dict[str, Any]], say: Callable[[str], None]) -> dict[str, Any]:
    """A step's summary, or its error (the demo then reports the failure and exits non-zero)."""
    import httpx

    from iotguard.errors import IotGuardError

    try:
        return run()
    except (IotGuardError, httpx.HTTPError) as exc:
        code = getattr(exc, "code", type(exc).__name__)
        say(f"{name} failed: {code}: {exc}")
        return {"error": code}


def _update_step(hub: Hub, fleet: Fleet, say: Callable[[str], None]) -> dict[str, Any]:
    """Publish a broken release 2 and a good release 3 of every model and roll each out in stages."""
    from iotguard.sim.updates import FleetUpdate, RolloutProgress

    models = sorted({d.model for d in fleet.devices})
    update = FleetUpdate.create(hub.services, models)
    for d in fleet.devices:
        update.attach(d.agent, d.model)
    say(f"firmware: TUF repository with offline 2-of-3 root keys, {len(models)} model(s) delegated")

    def progress(p: RolloutProgress) -> None:
        say(f"  round {p.round}: stage {p.stage}/{p.stages} ({p.percent:g}%) {p.state}"
            f"{' (' + p.reason + ')' if p.reason else ''}; committed {p.updated}, rolled back {p.rolled_back}")

    # The devices in the schedule: a scanner the detection step quarantined is not offered releases.
    out: dict[str, Any] = {"devices": len(fleet.devices)}
    for label, version, broken in (("broken", 2, True), ("good", 3, False)):
        states = []
        for model in models:
            update.publish(model, version, size=64 * 1024, broken=broken)
            say(f"published {model} release {version}{' (its self-test fails on the device)' if broken else ''}; "
                f"rolling out in stages 1/10/50/100 %")
            states.append(update.roll_out(model, version, on_round=progress))
        out[label] = {"release": version, "states": {c.model: c.state.value for c in states},
                      "reasons": {c.model: c.reason for c in states},
                      "stopped_at_percent": {c.model: c.percent for c in states},
                      "versions": {str(v): n for v, n in update.versions().items()}}
        say(f"release {version}: {', '.join(f'{c.model} {c.state.value}' for c in states)}; "
            f"fleet versions {update.versions()}")
    return out


def run(args: argparse.Namespace) -> int:
    from iotguard.config import HubConfig
    from iotguard.hub.service import Hub
    from iotguard.sim import Fleet, reconcile, stored_identities
    from iotguard.sim.attestation import FleetFirmware, boot_and_attest
    from iotguard.sim.demo_analytics import analytics_lines, analytics_ok
    from iotguard.sim.demo_detection import contained, detection_lines

    if args.devices < 1 or args.seconds <= 0 or args.interval <= 0:
        print("iotguard demo: --devices, --seconds and --interval must be positive")
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="iotguard-demo-") if not args.data_dir else None
    root = Path(args.data_dir or (tmp.name if tmp else "."))
    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    cfg = HubConfig(data_dir=str(root / "hub"), embedded_broker_bind=f"127.0.0.1:{_free_port()}",
                    api_bind=f"127.0.0.1:{_free_port()}")
    hub = Hub(cfg)
    hub.start()
    say(f"hub up: API {hub.api_url}, embedded broker {hub.broker_address.url}, "
        f"fleet CA {hub.lifecycle.ca.fingerprint[:16]}")
    fleet = Fleet(lambda device_id, model: str(hub.lifecycle.add_device(device_id, model)),
                  hub_url=hub.api_url, broker_url=hub.broker_address.url, data_dir=root / "devices",
                  suites=[s.strip() for s in args.suites.split(",") if s.strip()], seed=args.seed,
                  device_seconds_per_round=args.device_seconds,
                  consent_recorder=hub.services.consent.record_initial_consent)
    detect: DetectionStep | None = None
    try:
        t0 = time.monotonic()
        fleet.add_devices(args.devices)
        say(f"{args.devices} devices enrolled in {time.monotonic() - t0:.1f}s "
            f"(suites: {', '.join(fleet.suites)})")
        firmware = FleetFirmware(root / "firmware")
        firmware.register(hub.services.attestation, {d.model for d in fleet.devices})
        appraised = Counter(boot_and_attest(d.agent, firmware.images, firmware.public_key)["status"]
                            for d in fleet.devices)
        say(f"measured boot + attestation (software root of trust): {dict(appraised)}")
        detect = _detection_setup(hub, fleet, firmware, root, say) \
            if args.detect and args.devices >= DETECT_MIN_DEVICES else None
        if args.detect and detect is None:
            say(f"detection skipped: it needs at least {DETECT_MIN_DEVICES} devices")
        detection: dict[str, Any] = {}
        run_started = time.time()
        tampered: dict[str, Any] = {}
        rng = random.Random(args.seed)
        start = time.monotonic()
        next_round = start
        next_report = start + 1.0
        attacked = False
        while (now := time.monotonic()) - start < args.seconds:
            if now >= next_round:
                fleet.send_round()
                next_round += args.interval
            if not attacked and now - start >= args.seconds / 3:
                tampered = _attacks(hub, fleet, firmware, root, rng, say)
                attacked = True
            if detect is not None and not detection and now - start >= 2 * args.seconds / 3:
                detection = _step("detection", lambda: detect.scanner(run_started, say), say)
            if now >= next_report:
                fleet.resend_due()
                snap = hub.processor.stats.snapshot()
                say(f"  t={now - start:5.1f}s sent={fleet.sent:6d} stored={snap['stored']:6d} "
                    f"rejected={sum(snap['rejected'].values()):3d} pending={fleet.pending():4d}")
                next_report += 1.0
            time.sleep(max(0.0, min(next_round, next_report) - time.monotonic()))
        # A slow machine can overrun the run's seconds before a step's turn: the step still runs, late.
        if not attacked:
            tampered = _attacks(hub, fleet, firmware, root, rng, say)
        if detect is not None and not detection:
            detection = _step("detection", lambda: detect.scanner(run_started, say), say)
        elapsed = time.monotonic() - start
        update = _update_step(hub, fleet, say) if args.update else {}
        fleet.flush_receipts()
        drain_deadline = time.monotonic() + 20
        while fleet.pending() and time.monotonic() < drain_deadline:
            fleet.resend_due()
            time.sleep(0.2)
        time.sleep(0.5)
        delivery = reconcile(fleet.sent_readings, stored_identities(hub.store))
        stored = delivery.stored
        rejected = hub.store.rejection_totals()
        receipts_stored = sum(len(hub.services.consent.privacy.receipts_of(d.agent.device_id))
                              for d in fleet.devices + fleet.retired)
        analytics = _analytics_step(hub, fleet, say) if args.analytics and args.devices >= ANALYTICS_MIN_DEVICES \
            else {}
        if args.analytics and not analytics:
            say(f"analytics skipped: they need at least {ANALYTICS_MIN_DEVICES} devices")
        summary: dict[str, Any] = {
            "devices": args.devices,
            "seconds": round(elapsed, 2),
            # Sets by reading identity (device + SHA-256 of the body): see iotguard.sim.delivery.
            "sent": delivery.sent,
            "stored": stored,
            "lost": delivery.lost,
            "duplicated": delivery.duplicated,
            "unexpected": delivery.unexpected,
            "unacknowledged": fleet.pending(),
            "rejected": dict(sorted(rejected.items())),
            "attacks_injected": dict(sorted(fleet.attacks.items())),
            "throughput_per_s": round(stored / elapsed, 1) if elapsed else 0.0,
            "latency_ms": _percentiles(fleet.latencies_ms),
            "hub_ingest_latency_ms": hub.processor.stats.latency_percentiles(),
            "withheld_on_device": dict(sorted(fleet.withheld.items())),
            "privacy_receipts_signed": fleet.receipts_sent,
            "privacy_receipts_stored": receipts_stored,
            "device_time_s": round(fleet.rounds * fleet.device_seconds_per_round),
            "suites": fleet.suites,
            "trust_tiers": dict(sorted(Counter(p.trust_tier for p in hub.services.posture.posture).items())),
            "device_trust_tiers": {p.device_id: p.trust_tier
                                   for p in sorted(hub.services.posture.posture, key=lambda p: p.device_id)},
            "attestation_fleet": dict(sorted(appraised.items())),
            "tampered_device": tampered,
        }
        if update:
            summary["update"] = update
        if analytics:
            summary["analytics"] = analytics
        if detect is not None:
            scanner = hub.services.posture.posture.get(str(detection.get("device", "")))
            summary["detection"] = {"learning": detect.learned, "scanner": detection,
                                    "quarantined_at_end": bool(scanner is not None and scanner.quarantined)}
    finally:
        if detect is not None:
            detect.close()
        fleet.close()
        while _ISSUED:
            hub.store.revoke_api_token(_ISSUED.pop(), now=hub.services.clock.now())
        hub.stop()
        if tmp is not None:
            tmp.cleanup()
    if not args.json:
        print("\nsummary")
        print(f"  readings sent      {summary['sent']}  (distinct readings the devices sealed)")
        print(f"  readings stored    {summary['stored']}  (rows in the hub database)")
        print(f"  compared as sets   lost {summary['lost']}, duplicated {summary['duplicated']}, "
              f"stored but never sent {summary['unexpected']}")
        print(f"  rejected           {', '.join(f'{k}={v}' for k, v in summary['rejected'].items()) or 'none'}")
        print(f"  attacks injected   {', '.join(f'{k}={v}' for k, v in summary['attacks_injected'].items())}")
        print(f"  trust tiers        {', '.join(f'{k}={v}' for k, v in summary['trust_tiers'].items())}")
        print("  trust tier of each device (attestation posture every decision reads)")
        for line in _tier_table(summary["device_trust_tiers"]):
            print(f"    {line}")
        if tampered:
            print(f"  tampered device    {tampered['device']}: {tampered['status']}, tier {tampered['trust_tier']}, "
                  f"ingest refused {tampered['ingest_refused']}, "
                  f"telemetry dropped from broker ACL {tampered['broker_acl_dropped']}")
        for line in analytics_lines(summary.get("analytics", {})) + detection_lines(summary.get("detection", {})):
            print(f"  {line}")
        print(f"  throughput         {summary['throughput_per_s']} readings/s")
        print(f"  withheld on device {', '.join(f'{k}={v}' for k, v in summary['withheld_on_device'].items())}"
              f"  (privacy pipeline: consent, frequency, budget)")
        print(f"  privacy receipts   {summary['privacy_receipts_stored']} stored by the hub "
              f"({summary['privacy_receipts_signed']} signed by devices)")
        print(f"  end-to-end latency p50 {summary['latency_ms']['p50']} ms, p99 {summary['latency_ms']['p99']} ms "
              f"(sealed on the device -> durably stored -> acknowledged back)")
    print(json.dumps(summary) if args.json else "")
    ok = (summary["lost"] == 0 and summary["duplicated"] == 0 and summary["unexpected"] == 0
          and summary["privacy_receipts_stored"] == summary["privacy_receipts_signed"]
          and all(summary["rejected"].get(code, 0) >= n for code, n in summary["attacks_injected"].items())
          and summary["attestation_fleet"] == {"affirming": args.devices}
          and tampered.get("status") == "contraindicated" and bool(tampered.get("ingest_refused"))
          and bool(tampered.get("broker_acl_dropped"))
          and (not args.update or (set(update["broken"]["states"].values()) == {"aborted"}
                                   and set(update["good"]["states"].values()) == {"completed"}
                                   and update["good"]["versions"] == {"3": update["devices"]}))
          and (not analytics or analytics_ok(analytics))
          and (detect is None or contained(summary["detection"])))
    return 0 if ok else 1
