"""Secured end-to-end ingest vs the raw rate of the same broker, with TLS on both sides.

Both runs drain the same sealed envelopes from the same broker, and both
connect with mutual TLS 1.3 using the hub's ``iotguard-hub`` client
certificate (Mosquitto runs the configuration ``iotguard broker config``
writes: client certificates from the fleet CA, CRL, ACL):

* baseline: a plain paho-mqtt subscriber (QoS 1, same TLS) that only counts messages;
* iotguard: the hub's MQTT ingest with every check on (strict parse, device
  and epoch lookup, batched AEAD open, replay window, durable SQLite commit,
  PUBACK after commit, authenticated end-to-end acks to devices).

With Mosquitto installed the envelopes are queued first for the (offline,
persistent-session) subscriber and the drain is timed, so neither run is
limited by the publisher (which holds its own fleet-CA certificate and an
ACL grant to publish every device's telemetry). Without Mosquitto the
embedded broker is used with live publishing and WITHOUT TLS (it has no
offline queue), and the table says so.

A scale-out row follows (``bench/ingest_scale.py``): 1, 2 and 3 real
``iotguard hub`` processes sharing one MQTT shared subscription on Mosquitto
(mTLS) and one PostgreSQL, each k measured twice (once with --quick); goal k=2 / k=1 >= 1.2 with
the set of stored readings equal to the set sent.

Usage: python bench/ingest.py [--quick] [--no-scale-out | --scale-out-only]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from iotguard.channel import TELEMETRY_FILTER, SequenceAllocator, UplinkSealer  # noqa: E402
from iotguard.config import HubConfig  # noqa: E402
from iotguard.crypto import get_suite  # noqa: E402
from iotguard.hub.broker import BrokerAddress, EmbeddedBroker  # noqa: E402
from iotguard.hub.compose import HubServices, build_hub_services  # noqa: E402
from iotguard.hub.ingest import IngestProcessor  # noqa: E402
from iotguard.hub.mosquitto import BrokerLimits, write_broker_config  # noqa: E402
from iotguard.hub.mqtt_ingest import MqttIngest  # noqa: E402
from iotguard.hub.service import tune_gc_for_ingest  # noqa: E402
from iotguard.hub.tls import HubTls  # noqa: E402
from iotguard.identity import b64e, derive_hub_session, request_transcript  # noqa: E402
from iotguard.keys import SoftwareKeyStore  # noqa: E402
from iotguard.sim.soak_env import publisher_tls  # noqa: E402
from iotguard.tls import client_context  # noqa: E402
from iotguard.wire import Reading, encode_reading  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    """Credential files: the fleet CA, the hub's client certificate, the publisher's."""

    ca: str
    hub: str
    publisher: str


#: The benchmark's publisher: one client publishing every simulated device's telemetry.
PUBLISHER = "bench-publisher"


def tls_files(core: HubServices, tmp: Path) -> Tls:
    pub = publisher_tls(core, tmp, name=PUBLISHER, segment="bench")
    return Tls(pub.ca, str(HubTls(Path(core.cfg.data_dir), core.lifecycle.ca).hub_mqtt_file), pub.publisher)


def start_mosquitto(tmp: Path, core: HubServices) -> tuple[subprocess.Popen[bytes], BrokerAddress] | None:
    """Mosquitto with the production configuration (mTLS, CRL, Cedar-derived ACL) plus the publisher's grant."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        return None
    port = free_port()

    def acl() -> str:
        return core.posture.broker_acl() + f"\nuser {PUBLISHER}\ntopic write iotguard/+/+/telemetry\n"

    # The hub's own client sets 1000 in flight; Mosquitto's default of 20 would cap its batches.
    limits = BrokerLimits(max_queued_messages=2_000_000, max_inflight_messages=1000)
    files = write_broker_config(tmp / "mosquitto", core.lifecycle.ca, core.store, "127.0.0.1", port,
                                core.clock.now(), bind_address="127.0.0.1", limits=limits, acl_renderer=acl)
    proc = subprocess.Popen([exe, "-c", str(files.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, BrokerAddress("127.0.0.1", port, tls=True)


def _client(client_id: str, certfile: str, tls: Tls | None, *, clean_session: bool = True) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                    protocol=mqtt.MQTTv311)
    if tls is not None:
        c.tls_set_context(client_context(tls.ca, certfile=certfile))
    return c


def enroll_devices(core: HubServices, tmp: Path, n: int, suite_name: str, prefix: str) -> list[UplinkSealer]:
    """Register devices and install session keys directly (the enrollment protocol itself is
    not what this benchmark measures); posture and policy are the hub's real ones."""
    registry = core.lifecycle
    sealers = []
    suite = get_suite(suite_name)
    store = registry.store
    for i in range(n):
        device_id = f"{prefix}-{i:05d}"
        code = registry.add_device(device_id, "thermo-1")
        from iotguard.identity import token_hash

        transcript = request_transcript("bench", {"d": device_id})
        _hub_pub, keys = derive_hub_session(device_id, 1, suite_name, os.urandom(32), transcript)
        now = registry.clock.now()
        store.enroll(device_id, token_hash(code.secret), now=now, identity_public_key=os.urandom(32),
                     cert_pem="", cert_serial=b64e(os.urandom(4)), cert_not_after=now + timedelta(days=30),
                     suite=suite_name, wrapped_key=registry._wrap(device_id, 1, keys))
        core.posture.sync(device_id)
        ks = SoftwareKeyStore(tmp / "devkeys" / device_id, device_binding=b"bench-device-binding")
        sealers.append(UplinkSealer(suite, device_id, 1, keys.uplink, SequenceAllocator(ks, "seq/1",
                                                                                        reserve=1 << 20)))
    return sealers


def make_envelopes(sealers: list[UplinkSealer], per_device: int) -> list[tuple[str, bytes]]:
    out = []
    t = int(time.time() * 1000)
    for k in range(per_device):
        for s in sealers:
            body = encode_reading(Reading(t + k, {"temperature": 20.0 + (k % 50) / 10, "humidity": 45.5}, "research"))
            _seq, env = s.seal(body)
            out.append((s.topic, env))
    return out


def publish(addr: tuple[str, int], messages: list[tuple[str, bytes]], done: mp.Event,  # type: ignore[valid-type]
            tls: Tls | None) -> None:
    c = _client(f"bench-pub-{os.getpid()}", tls.publisher if tls else "", tls)
    c.max_inflight_messages_set(10_000)
    c.max_queued_messages_set(0)
    c.connect(addr[0], addr[1])
    c.loop_start()
    # In windows, so paho's outgoing queue never overflows on large runs.
    for start in range(0, len(messages), 5000):
        infos = [c.publish(t, p, qos=1) for t, p in messages[start:start + 5000]]
        for i in infos:
            i.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()
    done.set()  # type: ignore[attr-defined]


def publish_all(addr: BrokerAddress, messages: list[tuple[str, bytes]], wait: bool, tls: Tls | None) -> mp.Process:
    done = mp.Event()
    p = mp.Process(target=publish, args=((addr.host, addr.port), messages, done, tls))
    p.start()
    if wait:
        p.join()
    return p


def prime_session(addr: BrokerAddress, client_id: str, topic: str, tls: Tls | None) -> None:
    """Create a persistent session with a subscription, then go offline so the broker queues."""
    c = _client(client_id, tls.hub if tls else "", tls, clean_session=False)
    ev = threading.Event()
    c.on_subscribe = lambda *a: ev.set()
    c.connect(addr.host, addr.port)
    c.loop_start()
    c.subscribe(topic, qos=1)
    ev.wait(5)
    c.disconnect()
    c.loop_stop()


def run_raw(addr: BrokerAddress, messages: list[tuple[str, bytes]], queued: bool, tls: Tls | None) -> float:
    n = len(messages)
    cid = f"raw-{os.getpid()}-{time.time_ns()}"
    if queued:
        prime_session(addr, cid, TELEMETRY_FILTER, tls)
        publish_all(addr, messages, wait=True, tls=tls)
    got = 0
    first = last = 0.0
    finished = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal got, first, last
        if got == 0:
            first = time.perf_counter()
        got += 1
        if got >= n:
            last = time.perf_counter()
            finished.set()

    c = _client(cid, tls.hub if tls else "", tls, clean_session=False)
    c.max_inflight_messages_set(1000)
    c.on_message = on_message
    start = time.perf_counter()
    c.connect(addr.host, addr.port)
    c.subscribe(TELEMETRY_FILTER, qos=1)
    c.loop_start()
    if not queued:
        publish_all(addr, messages, wait=False, tls=tls)
    finished.wait(600)
    c.disconnect()
    c.loop_stop()
    return n / ((last or time.perf_counter()) - (first if queued else start))


def run_secured(addr: BrokerAddress, core: HubServices, cfg: HubConfig, messages: list[tuple[str, bytes]],
                queued: bool, tls: Tls | None) -> tuple[float, dict[str, object]]:
    registry = core.lifecycle
    n = len(messages)
    cid = f"hub-{os.getpid()}-{time.time_ns()}"
    if queued:
        prime_session(addr, cid, TELEMETRY_FILTER, tls)
        publish_all(addr, messages, wait=True, tls=tls)
    # Every check on: strict parse, device/epoch, batched open, replay window,
    # Cedar publish decision, data-contract check, durable commit, audit of rejections.
    proc = IngestProcessor(registry.store, registry, cfg, authorizer=core.posture.authorize_reading,
                           audit=core.audit.log)
    for s in {t for t, _ in messages}:
        registry.session(s.split("/")[2], 1)  # warm the device cache as a running hub would have it
    ingest = MqttIngest(proc, addr, cfg, shared=False, client_id=cid,
                        tls=client_context(tls.ca, certfile=tls.hub) if tls else None)
    start = time.perf_counter()
    ingest.start()
    deadline = time.monotonic() + 600
    first = None
    pub = None if queued else publish_all(addr, messages, wait=False, tls=tls)
    while proc.stats.stored < n and time.monotonic() < deadline:
        if first is None and proc.stats.stored:
            first = time.perf_counter()
        time.sleep(0.005)
    end = time.perf_counter()
    ingest.stop()
    if pub is not None:
        pub.join()
    stored = proc.stats.stored
    snap = proc.stats.snapshot()
    return stored / (end - start), {"stored": stored, "batches": snap["batches"], "rejected": snap["rejected"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller run (about a minute)")
    ap.add_argument("--suite", default="chacha20-poly1305")
    ap.add_argument("--no-scale-out", action="store_true", help="skip the 1/2/3 hub process row")
    ap.add_argument("--scale-out-only", action="store_true",
                    help="run only the 1/2/3 hub process row (updates scale_out in the results JSON)")
    args = ap.parse_args()
    if args.scale_out_only:
        return scale_out(args.quick, None)
    devices, per_device = (50, 300) if args.quick else (100, 1000)
    # The hub process tunes its collector at start (iotguard.hub.service); do the
    # same here so both the raw subscriber and the secured ingest run with it.
    tune_gc_for_ingest()
    tmp = Path(tempfile.mkdtemp(prefix="iotguard-bench-ingest-"))
    tmp.chmod(0o711)  # Mosquitto started as root reads its files as its own user
    os.environ.setdefault("IOTGUARD_DEVICE_SECRET", str(tmp / "device.secret"))
    cfg = HubConfig(data_dir=str(tmp / "hub"), batch_max_messages=2000, batch_max_wait_ms=20)
    Path(cfg.data_dir).mkdir(parents=True)
    core = build_hub_services(cfg)
    mosq = start_mosquitto(tmp, core)
    embedded = None
    tls: Tls | None = None
    if mosq is not None:
        broker_name, addr, queued = "mosquitto (mTLS, TLS 1.3)", mosq[1], True
        tls = tls_files(core, tmp)
    else:
        embedded = EmbeddedBroker(f"127.0.0.1:{free_port()}", unsafe_plaintext=True)
        embedded.start()
        broker_name, addr, queued = "embedded (amqtt, NO TLS: mosquitto not installed)", embedded.address, False
    results: dict[str, object] = {}
    try:
        rows = []
        for j, suite_name in enumerate(dict.fromkeys([args.suite, "ascon-aead128"])):
            sealers = enroll_devices(core, tmp / suite_name, devices, suite_name, prefix=f"bench{j}")
            messages = make_envelopes(sealers, per_device)
            raw = run_raw(addr, messages, queued, tls)
            secured, detail = run_secured(addr, core, cfg, messages, queued, tls)
            assert detail["stored"] == len(messages) and not detail["rejected"], detail
            rows.append((suite_name, raw, secured, detail))
        print(f"\nbench/ingest.py  broker: {broker_name}  messages: {devices} devices x {per_device}"
              f"  ({'queued drain' if queued else 'live publish'})")
        print(f"{'suite':<20} {'raw subscriber/s':>18} {'iotguard secured/s':>20} {'ratio':>7}")
        for suite_name, raw, secured, _d in rows:
            print(f"{suite_name:<20} {raw:>18,.0f} {secured:>20,.0f} {secured / raw:>7.2f}")
        head_suite, raw, secured, detail = rows[0]
        results = {
            "benchmark": "ingest",
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "quick": args.quick,
            "broker": broker_name,
            "mode": "queued drain" if queued else "live publish",
            "messages": devices * per_device,
            "rows": [{"suite": s, "raw_per_s": round(r), "secured_per_s": round(v), "ratio": round(v / r, 3),
                      "batches": d["batches"]} for s, r, v, d in rows],
            "headline": {
                "name": f"secured end-to-end ingest ({head_suite}, SQLite; parse, open, replay, Cedar, contract, "
                        "durable commit, e2e acks)",
                "unit": "readings/s",
                "value": round(secured),
                "baseline_name": f"plain paho subscriber (same TLS client certificate) draining the same "
                                 f"{broker_name} broker",
                "baseline_value": round(raw),
                "ratio": round(secured / raw, 3),
                "goal": ">= 0.5",
            },
        }
        print(f"\nheadline ratio {results['headline']['ratio']} (goal >= 0.5)")
    finally:
        if mosq is not None:
            mosq[0].terminate()
        if embedded is not None:
            embedded.stop()
        core.store.engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.no_scale_out:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")
        return 0
    return scale_out(args.quick, results)


RESULTS = ROOT / "bench" / "results" / "ingest.json"


def scale_out(quick: bool, results: dict[str, object] | None) -> int:
    """Run the scale-out row, print it and store it under ``scale_out`` in the results JSON."""
    from ingest_scale import run_scale_out

    print("\nscale-out: 1, 2, 3 `iotguard hub` processes, Mosquitto (mTLS) + PostgreSQL, queued drain")
    section = run_scale_out(quick, tls_files, start_mosquitto, enroll_devices, publish_all)
    print(f"{'run':<5} {'load (uptime)':<48} {'k=1 /s':>9} {'k=2 /s':>9} {'k=3 /s':>9} {'2/1':>6} {'3/1':>6}")
    ok = True
    for i, run in enumerate(section["runs"], 1):
        rates = [r["readings_per_s"] for r in run["rows"]]
        ok = ok and all(r["lost"] == 0 and r["duplicated"] == 0 and r["unexpected"] == 0 for r in run["rows"])
        load = run["uptime_before"].split("load average:")[-1].strip()
        print(f"{i:<5} {load:<48} {rates[0]:>9,.0f} {rates[1]:>9,.0f} {rates[2]:>9,.0f} "
              f"{run['ratio_2_over_1']:>6.2f} {run['ratio_3_over_1']:>6.2f}")
    print(f"nothing lost, duplicated or unexpected: {ok} (set of stored (device, epoch, seq) == set sent)")
    if results is None:
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "ingest"}
    results["scale_out"] = section
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
