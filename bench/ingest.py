"""Secured end-to-end ingest vs the raw rate of the same broker.

Both runs drain the same sealed envelopes from the same broker:

* baseline: a plain paho-mqtt subscriber (QoS 1) that only counts messages;
* iotguard: the hub's MQTT ingest with every check on (strict parse, device
  and epoch lookup, batched AEAD open, replay window, durable SQLite commit,
  PUBACK after commit, authenticated end-to-end acks to devices).

With Mosquitto installed the envelopes are queued first for the (offline,
persistent-session) subscriber and the drain is timed, so neither run is
limited by the publisher. Without it the embedded broker is used with live
publishing (it has no offline queue) and the table says so.

Usage: python bench/ingest.py [--quick]
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
from iotguard.hub.mqtt_ingest import MqttIngest  # noqa: E402
from iotguard.hub.service import tune_gc_for_ingest  # noqa: E402
from iotguard.identity import b64e, derive_hub_session, request_transcript  # noqa: E402
from iotguard.keys import SoftwareKeyStore  # noqa: E402
from iotguard.wire import Reading, encode_reading  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(tmp: Path) -> tuple[subprocess.Popen[bytes], BrokerAddress] | None:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        return None
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, BrokerAddress("127.0.0.1", port)


def enroll_devices(hub: HubServices, tmp: Path, n: int, suite_name: str) -> list[UplinkSealer]:
    """Register devices and install session keys directly (the enrollment protocol itself is
    not what this benchmark measures); posture and policy are the hub's real ones."""
    registry = hub.lifecycle
    sealers = []
    suite = get_suite(suite_name)
    store = registry.store
    for i in range(n):
        device_id = f"bench-{i:05d}"
        code = registry.add_device(device_id, "thermo-1")
        from iotguard.identity import token_hash

        transcript = request_transcript("bench", {"d": device_id})
        _hub_pub, keys = derive_hub_session(device_id, 1, suite_name, os.urandom(32), transcript)
        now = registry.clock.now()
        store.enroll(device_id, token_hash(code.secret), now=now, identity_public_key=os.urandom(32),
                     cert_pem="", cert_serial=b64e(os.urandom(4)), cert_not_after=now + timedelta(days=30),
                     suite=suite_name, wrapped_key=registry._wrap(device_id, 1, keys))
        hub.posture.sync(device_id)
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


def publish(addr: tuple[str, int], messages: list[tuple[str, bytes]], done: mp.Event) -> None:  # type: ignore[valid-type]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}", protocol=mqtt.MQTTv311)
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


def publish_all(addr: BrokerAddress, messages: list[tuple[str, bytes]], wait: bool) -> mp.Process:
    done = mp.Event()
    p = mp.Process(target=publish, args=((addr.host, addr.port), messages, done))
    p.start()
    if wait:
        p.join()
    return p


def prime_session(addr: BrokerAddress, client_id: str, topic: str) -> None:
    """Create a persistent session with a subscription, then go offline so the broker queues."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
    ev = threading.Event()
    c.on_subscribe = lambda *a: ev.set()
    c.connect(addr.host, addr.port)
    c.loop_start()
    c.subscribe(topic, qos=1)
    ev.wait(5)
    c.disconnect()
    c.loop_stop()


def run_raw(addr: BrokerAddress, messages: list[tuple[str, bytes]], queued: bool) -> float:
    n = len(messages)
    cid = f"raw-{os.getpid()}-{time.time_ns()}"
    if queued:
        prime_session(addr, cid, TELEMETRY_FILTER)
        publish_all(addr, messages, wait=True)
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

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False, protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(1000)
    c.on_message = on_message
    start = time.perf_counter()
    c.connect(addr.host, addr.port)
    c.subscribe(TELEMETRY_FILTER, qos=1)
    c.loop_start()
    if not queued:
        publish_all(addr, messages, wait=False)
    finished.wait(600)
    c.disconnect()
    c.loop_stop()
    return n / ((last or time.perf_counter()) - (first if queued else start))


def run_secured(addr: BrokerAddress, hub: HubServices, cfg: HubConfig, messages: list[tuple[str, bytes]],
                queued: bool) -> tuple[float, dict[str, object]]:
    registry = hub.lifecycle
    n = len(messages)
    cid = f"hub-{os.getpid()}-{time.time_ns()}"
    if queued:
        prime_session(addr, cid, TELEMETRY_FILTER)
        publish_all(addr, messages, wait=True)
    # Every check on: strict parse, device/epoch, batched open, replay window,
    # Cedar publish decision, data-contract check, durable commit, audit of rejections.
    proc = IngestProcessor(registry.store, registry, cfg, authorizer=hub.posture.authorize_reading,
                           audit=hub.audit.log)
    for s in {t for t, _ in messages}:
        registry.session(s.split("/")[2], 1)  # warm the device cache as a running hub would have it
    ingest = MqttIngest(proc, addr, cfg, shared=False, client_id=cid)
    start = time.perf_counter()
    ingest.start()
    deadline = time.monotonic() + 600
    first = None
    pub = None if queued else publish_all(addr, messages, wait=False)
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
    args = ap.parse_args()
    devices, per_device = (50, 300) if args.quick else (100, 1000)
    # The hub process tunes its collector at start (iotguard.hub.service); do the
    # same here so both the raw subscriber and the secured ingest run with it.
    tune_gc_for_ingest()
    tmp = Path(tempfile.mkdtemp(prefix="iotguard-bench-ingest-"))
    os.environ.setdefault("IOTGUARD_DEVICE_SECRET", str(tmp / "device.secret"))
    mosq = start_mosquitto(tmp)
    embedded = None
    if mosq is not None:
        broker_name, addr, queued = "mosquitto", mosq[1], True
    else:
        embedded = EmbeddedBroker(f"127.0.0.1:{free_port()}")
        embedded.start()
        broker_name, addr, queued = "embedded (amqtt)", embedded.address, False
    results: dict[str, object] = {}
    try:
        rows = []
        for suite_name in dict.fromkeys([args.suite, "ascon-aead128"]):
            cfg = HubConfig(data_dir=str(tmp / f"hub-{suite_name}"), batch_max_messages=2000, batch_max_wait_ms=20)
            Path(cfg.data_dir).mkdir(parents=True)
            hub = build_hub_services(cfg)
            store = hub.store
            sealers = enroll_devices(hub, tmp / suite_name, devices, suite_name)
            messages = make_envelopes(sealers, per_device)
            raw = run_raw(addr, messages, queued)
            secured, detail = run_secured(addr, hub, cfg, messages, queued)
            assert detail["stored"] == len(messages) and not detail["rejected"], detail
            rows.append((suite_name, raw, secured, detail))
            store.engine.dispose()
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
                "baseline_name": f"plain paho subscriber draining the same {broker_name} broker",
                "baseline_value": round(raw),
                "ratio": round(secured / raw, 3),
                "goal": ">= 0.5",
            },
        }
        out = ROOT / "bench" / "results" / "ingest.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nheadline ratio {results['headline']['ratio']} (goal >= 0.5); wrote {out.relative_to(ROOT)}")
    finally:
        if mosq is not None:
            mosq[0].terminate()
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
