"""Chain anchoring and witnessing: what they cost ingest, in gas and in latency.

Measures in one run:

* ingest readings/s through the hub's real ingest pipeline (strict parse,
  device and epoch lookup, batched AEAD open, replay window, Cedar decision,
  durable SQLite commit) fed in batches of 2,000 -- with the hub's
  maintenance thread recording an audit event every 50 ms and publishing a
  checkpoint every 0.2 s and anchoring it:
  baseline = file anchor only (the default), measured = file anchor + chain
  anchor batching 16 checkpoints per transaction (so a transaction lands
  every ~3 s, several per round; a deployment with 60 s checkpoints and
  batches of 128 sends one every two hours), and a stress mode with one
  transaction per 2 checkpoints. The chain is py-evm served over HTTP
  JSON-RPC from another process with a 1 s block time, standing in for a
  remote node (the hub sends and never waits for a block); modes rotate
  order each round and the median is kept;
  rounds alternate off/on and the median is kept;
* gas per checkpoint: one transaction per checkpoint (steady state) vs one
  ``anchorBatch`` transaction of N checkpoints; checkpoints anchored per
  transaction and per second;
* latency from an audit event to a checkpoint that is (a) file-anchored,
  (b) cosigned by 2 of 2 witnesses over HTTPS (``iotguard witness run``
  processes) and chain-anchored -- not counting the wait for the next
  scheduled checkpoint.

Headline ratio = ingest readings/s with chain anchoring on / off (goal >= 0.95,
i.e. within 5%); gas goal: batched gas per checkpoint <= 1/10 of one
transaction per checkpoint.

    python bench/anchor.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from web3 import Web3  # noqa: E402

from iotguard.audit import AuditEvent, CheckpointSchedule, EventType, MemoryLogStore, NoteSigner, TransparencyLog  # noqa: E402
from iotguard.audit.note import NoteVerifier  # noqa: E402
from iotguard.audit.witness_protocol import collect_cosignatures  # noqa: E402
from iotguard.config import HubConfig  # noqa: E402
from iotguard.hub.audit_store import FileAnchor  # noqa: E402
from iotguard.hub.chain_anchor import ChainAnchor, deploy_checkpoint_anchor  # noqa: E402
from iotguard.hub.compose import build_hub_services  # noqa: E402
from iotguard.hub.ingest import Incoming, IngestProcessor  # noqa: E402
from iotguard.hub.witness_server import HttpWitness  # noqa: E402
from iotguard.keys import SoftwareKeyStore  # noqa: E402
from iotguard.keys.keystore import KeyKind  # noqa: E402

GOAL_RATIO = 0.95
GOAL_GAS = 0.1
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _ingest_helpers():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def _serve_chain(queue: mp.Queue, block_time: float | None) -> None:  # type: ignore[type-arg]
    from tests.audit.evm_rpc import evm_chain

    with evm_chain(block_time) as (url, _):
        queue.put(url)
        while True:
            time.sleep(3600)


def start_chain(block_time: float | None) -> tuple[mp.Process, str]:
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    proc = mp.Process(target=_serve_chain, args=(queue, block_time), daemon=True)
    proc.start()
    return proc, queue.get(timeout=120)


def ingest_round(core, messages, anchors, tick_s: float = 0.05, interval_s: float = 0.2) -> dict[str, float]:  # type: ignore[no-untyped-def]
    registry = core.lifecycle
    cfg = core.cfg
    log = core.audit.log
    proc = IngestProcessor(core.store, registry, cfg, authorizer=core.posture.authorize_reading, audit=log)
    schedule = CheckpointSchedule(log, timedelta(seconds=interval_s), anchors)
    stop = threading.Event()
    published = {"checkpoints": 0, "failures": 0}

    def maintenance() -> None:
        n = 0
        while not stop.wait(tick_s):
            # Security events keep arriving (valid readings write none), so every checkpoint is new.
            log.record(AuditEvent(EventType.AUTH_FAILED, datetime.now(UTC), "hub", f"probe-{n}"))
            n += 1
            result = schedule.tick(datetime.now(UTC))
            if result.checkpoint is not None:
                published["checkpoints"] += 1
                published["failures"] += len(result.failures)

    thread = threading.Thread(target=maintenance, daemon=True)
    thread.start()
    batch = 2000
    start = time.perf_counter()
    cpu0 = time.process_time()  # every thread of this process: ingest and the maintenance thread's anchoring
    for i in range(0, len(messages), batch):
        proc.process([Incoming(t, p) for t, p in messages[i : i + batch]])
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    stop.set()
    thread.join()
    assert proc.stats.stored == len(messages), (proc.stats.stored, len(messages))
    for a in anchors:
        if isinstance(a, ChainAnchor):
            a.flush(wait=30)  # after the timed part: confirm what was sent, to report it
    txs = sum(len(a.batches) for a in anchors if isinstance(a, ChainAnchor))
    return {"readings_per_s": len(messages) / elapsed, "readings_per_cpu_s": len(messages) / cpu,
            "seconds": round(elapsed, 2), "cpu_seconds": round(cpu, 2), "chain_txs": txs, **published}


#: Chain anchor batch size per mode: ``on`` is the measured configuration, ``stress`` anchors far more
#: often than any deployment would (one transaction per 2 checkpoints, i.e. every 0.4 s).
MODES = {"off": 0, "on": 16, "stress": 2}


def bench_ingest(tmp: Path, chain_url: str, devices: int, per_device: int, rounds: int) -> dict[str, object]:
    helpers = _ingest_helpers()
    web3 = Web3(Web3.HTTPProvider(chain_url))
    sender = web3.eth.accounts[0]
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpu_rates: dict[str, list[float]] = {m: [] for m in MODES}
    detail: list[dict[str, object]] = []
    order = list(MODES)
    for r in range(rounds):
        for mode in order[r % len(order):] + order[: r % len(order)]:
            cfg = HubConfig(data_dir=str(tmp / f"hub-{mode}-{r}"), batch_max_messages=2000)
            Path(cfg.data_dir).mkdir(parents=True)
            core = build_hub_services(cfg)
            sealers = helpers.enroll_devices(core, tmp / f"dev-{mode}-{r}", devices, "chacha20-poly1305",
                                             prefix=f"anchor-{mode}-{r}")
            messages = helpers.make_envelopes(sealers, per_device)
            for s in sealers:
                core.lifecycle.session(s.device_id, 1)
            anchors: list[object] = [FileAnchor(tmp / f"anchors-{mode}-{r}.log")]
            if MODES[mode]:
                contract = deploy_checkpoint_anchor(web3, sender)
                anchors.append(ChainAnchor(web3, contract, sender, batch_size=MODES[mode],
                                           max_delay=timedelta(seconds=10)))
            res = ingest_round(core, messages, anchors)
            rates[mode].append(res["readings_per_s"])
            cpu_rates[mode].append(res["readings_per_cpu_s"])
            detail.append({"mode": mode, **res})
            core.store.engine.dispose()
    return {
        "readings": devices * per_device,
        "batch_size_per_mode": MODES,
        **{f"{m}_readings_per_s": [round(x) for x in v] for m, v in rates.items()},
        **{f"{m}_median": round(statistics.median(v)) for m, v in rates.items()},
        **{f"{m}_readings_per_cpu_s": [round(x) for x in v] for m, v in cpu_rates.items()},
        **{f"{m}_cpu_median": round(statistics.median(v)) for m, v in cpu_rates.items()},
        "rounds": detail,
    }


def make_log(tmp: Path, name: str) -> TransparencyLog:
    keys = SoftwareKeyStore(tmp / f"{name}-keys")
    keys.generate("log", KeyKind.ED25519)
    return TransparencyLog(MemoryLogStore(), NoteSigner(keys, "log", f"bench.{name}/audit"))


def bench_gas(tmp: Path, chain_url: str, batch: int, singles: int) -> dict[str, object]:
    web3 = Web3(Web3.HTTPProvider(chain_url))
    sender = web3.eth.accounts[0]
    contract = deploy_checkpoint_anchor(web3, sender)
    log = make_log(tmp, "gas")
    single = ChainAnchor(web3, contract, sender, batch_size=1)
    start = time.perf_counter()
    for i in range(singles):
        log.record(AuditEvent(EventType.AUTH_FAILED, T0, "hub", f"s-{i}"))
        single.anchor(log.publish_checkpoint(T0), T0)
    single_s = time.perf_counter() - start
    steady = [b.gas_used for b in single.batches[1:]]
    batched = ChainAnchor(web3, contract, sender, batch_size=batch, max_delay=timedelta(days=1))
    notes = []
    for i in range(batch):
        log.record(AuditEvent(EventType.AUTH_FAILED, T0, "hub", f"b-{i}"))
        notes.append(log.publish_checkpoint(T0))
    start = time.perf_counter()
    for note in notes:
        batched.anchor(note, T0)
    batch_s = time.perf_counter() - start
    per_single = statistics.median(steady)
    per_batched = batched.batches[0].gas_used / batch
    return {
        "first_anchor_gas": single.batches[0].gas_used,
        "single_tx_gas_per_checkpoint": per_single,
        "batch_size": batch,
        "batch_tx_gas": batched.batches[0].gas_used,
        "batched_gas_per_checkpoint": round(per_batched, 1),
        "gas_ratio_batched_over_single": round(per_batched / per_single, 4),
        "checkpoints_per_tx_batched": batch,
        "checkpoints_per_s_single": round(singles / single_s, 1),
        "checkpoints_per_s_batched": round(batch / batch_s, 1),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_latency(tmp: Path, chain_url: str, samples: int) -> dict[str, object]:
    web3 = Web3(Web3.HTTPProvider(chain_url))
    sender = web3.eth.accounts[0]
    contract = deploy_checkpoint_anchor(web3, sender)
    log = make_log(tmp, "latency")
    procs: list[subprocess.Popen[bytes]] = []
    witnesses: list[HttpWitness] = []
    try:
        for name in ("w1", "w2"):
            state = tmp / name
            exe = [sys.executable, "-m", "iotguard"]
            vkey = subprocess.run([*exe, "witness", "init", "--state", str(state), "--name", f"{name}.bench/w"],
                                  check=True, capture_output=True, text=True).stdout.strip()
            port = _free_port()
            procs.append(subprocess.Popen(
                [*exe, "witness", "run", "--state", str(state), "--name", f"{name}.bench/w",
                 "--log-key", log.verifier.vkey(), "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            witnesses.append(HttpWitness(f"https://127.0.0.1:{port}", NoteVerifier.from_vkey(vkey),
                                         log.consistency_proof, ca_file=state / "tls-cert.pem"))
        file_anchor = FileAnchor(tmp / "latency-anchors.log")
        chain = ChainAnchor(web3, contract, sender, batch_size=1)
        sizes: dict[str, int] = {}
        file_ms: list[float] = []
        full_ms: list[float] = []
        for i in range(samples):
            t0 = time.perf_counter()
            log.record(AuditEvent(EventType.DEVICE_QUARANTINED, T0, "op", f"dev-{i}"))
            note = log.publish_checkpoint(datetime.now(UTC))
            file_anchor.anchor(note, datetime.now(UTC))
            file_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            log.record(AuditEvent(EventType.DEVICE_RELEASED, T0, "op", f"dev-{i}"))
            note = log.publish_checkpoint(datetime.now(UTC))
            final = collect_cosignatures(note, log.verifier, witnesses, 2, sizes)
            chain.anchor(final.note, datetime.now(UTC))
            full_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    return {
        "samples": samples,
        "file_anchored_ms_median": round(statistics.median(file_ms), 2),
        "witnessed_2of2_and_chain_anchored_ms_median": round(statistics.median(full_ms), 2),
        "witnessed_2of2_and_chain_anchored_ms_max": round(max(full_ms), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "anchor.json"))
    args = parser.parse_args()
    devices, per_device, rounds = (50, 400, 1) if args.quick else (100, 800, 5)
    batch = 128
    # Ingest runs against a chain with a 1 s block time (sent transactions wait in its pool, as on a
    # real chain, and the hub does not wait for them); gas and latency against one that mines at once.
    timed_proc, timed_url = start_chain(1.0)
    instant_proc, url = start_chain(None)
    try:
        with tempfile.TemporaryDirectory(prefix="iotguard-bench-anchor-") as d:
            tmp = Path(d)
            ingest = bench_ingest(tmp, timed_url, devices, per_device, rounds)
            gas = bench_gas(tmp, url, batch, 4 if args.quick else 8)
            latency = bench_latency(tmp, url, 5 if args.quick else 20)
    finally:
        timed_proc.terminate()
        instant_proc.terminate()
    ratio = ingest["on_median"] / ingest["off_median"]  # type: ignore[operator]
    cpu_ratio = ingest["on_cpu_median"] / ingest["off_cpu_median"]  # type: ignore[operator]
    # Modes run back to back within a round, so on/off of the same round shares the machine's load.
    paired = statistics.median(on / off for on, off in zip(ingest["on_readings_per_s"],  # type: ignore[call-overload]
                                                            ingest["off_readings_per_s"], strict=True))
    result = {
        "bench": "anchor",
        "headline": {
            "name": "hub ingest readings/s with chain anchoring on (16 checkpoints per transaction)",
            "unit": "readings/s",
            "value": ingest["on_median"],
            "baseline_name": "hub ingest readings/s with the file anchor only (chain anchoring off)",
            "baseline_value": ingest["off_median"],
            "ratio": round(ratio, 3),
            "goal": f"ratio >= {GOAL_RATIO} (within 5%); batched gas per checkpoint <= {GOAL_GAS} x one tx each",
            # The same rounds per CPU-second of the hub process (ingest plus the maintenance thread
            # that anchors): the cost anchoring adds, without the other jobs on a shared machine.
            "cpu_ratio": round(cpu_ratio, 3),
            # Median over rounds of that round's on/off (the load drifts between rounds).
            "paired_ratio": round(paired, 3),
        },
        "goals": {
            "ratio_met": ratio >= GOAL_RATIO,
            "cpu_ratio_met": cpu_ratio >= GOAL_RATIO,
            "gas_ratio": gas["gas_ratio_batched_over_single"],
            "gas_met": gas["gas_ratio_batched_over_single"] <= GOAL_GAS,  # type: ignore[operator]
        },
        "ingest": ingest,
        "gas": gas,
        "latency": latency,
        "chain": "py-evm (eth-tester) over HTTP JSON-RPC in a separate process; 1 s blocks for ingest, "
                 "instant mining for gas and latency",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    print(f"{'measure':<58} {'value':>14}")
    rows = [
        ("ingest readings/s, chain anchoring off (median)", ingest["off_median"]),
        ("ingest readings/s, chain anchoring on, 16/tx (median)", ingest["on_median"]),
        ("ratio on/off (goal >= 0.95)", round(ratio, 3)),
        ("ingest readings per hub CPU-s, off / on (median)", f"{ingest['off_cpu_median']} / {ingest['on_cpu_median']}"),
        ("CPU ratio on/off", round(cpu_ratio, 3)),
        ("paired ratio on/off (median over rounds)", round(paired, 3)),
        ("ingest readings/s, stress: 2 checkpoints/tx (median)", ingest["stress_median"]),
        ("ratio stress/off", round(ingest["stress_median"] / ingest["off_median"], 3)),  # type: ignore[operator]
        ("gas per checkpoint, one tx each (steady state)", gas["single_tx_gas_per_checkpoint"]),
        (f"gas per checkpoint, batches of {batch}", gas["batched_gas_per_checkpoint"]),
        ("gas ratio batched/single (goal <= 0.1)", gas["gas_ratio_batched_over_single"]),
        ("checkpoints anchored/s, one tx each", gas["checkpoints_per_s_single"]),
        ("checkpoints anchored/s, batched", gas["checkpoints_per_s_batched"]),
        ("event -> file-anchored checkpoint, ms (median)", latency["file_anchored_ms_median"]),
        ("event -> 2-of-2 witnessed + chain-anchored, ms (median)", latency["witnessed_2of2_and_chain_anchored_ms_median"]),
    ]
    for name, value in rows:
        print(f"{name:<58} {value!s:>14}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
