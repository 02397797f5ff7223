"""Audit log benchmark: what tamper evidence costs.

Measures, in one run on SQLite (WAL, synchronous=FULL):

* durable batched appends/s of audit events through the transparency log
  (canonical CBOR, leaf hashing, Merkle integration, subtree hashes,
  sequencer lock, commit);
* the baseline: plain durable inserts of the same events (same CBOR, same
  columns and index, same batches and commits) with no Merkle work;
* inclusion- and consistency-proof latency at 1M and 10M leaves (stores
  built by bulk append of synthetic leaves);
* raw SHA-256 leaf hashing of the same leaves, as the ceiling.

Headline ratio = log appends/s / plain inserts/s (goal >= 0.5); also
reported against 50,000 appends/s and 1 ms per proof.

    python bench/audit.py [--quick] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Column, Index, Integer, LargeBinary, MetaData, String, Table

from iotguard.audit import AuditEvent, EventType, TransparencyLog, merkle
from iotguard.audit.log import LeafRecord
from iotguard.hub.audit_store import SqlLogStore, _BulkInsert, create_audit_tables
from iotguard.hub.db import make_engine

GOAL_RATIO = 0.5
GOAL_APPENDS = 50_000
GOAL_PROOF_MS = 1.0
BATCH = 5_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)
REASONS = ("forged", "replay", "malformed", "unknown_device")


def make_events(n: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            EventType.ENVELOPES_REJECTED,
            T0 + timedelta(milliseconds=i),
            "hub.ingest",
            f"dev-{i % 5000:05d}",
            {"reason": REASONS[i % 4], "count": 1 + i % 97, "window_s": 10},
        )
        for i in range(n)
    ]


def fresh_engine(directory: Path, name: str):  # type: ignore[no-untyped-def]
    path = directory / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return make_engine(f"sqlite:///{path}")


def bench_log_appends(directory: Path, events: list[AuditEvent]) -> float:
    engine = fresh_engine(directory, "log")
    with engine.begin() as conn:
        create_audit_tables(conn)
    log = TransparencyLog(SqlLogStore(engine))
    start = time.perf_counter()
    for i in range(0, len(events), BATCH):
        log.append(events[i : i + BATCH])
    elapsed = time.perf_counter() - start
    assert log.size() == len(events)
    engine.dispose()
    return len(events) / elapsed


def bench_plain_inserts(directory: Path, events: list[AuditEvent]) -> float:
    engine = fresh_engine(directory, "plain")
    meta = MetaData()
    plain = Table(
        "plain_events",
        meta,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("event_type", String(64), nullable=False),
        Column("subject", String(256), nullable=False),
        Column("data", LargeBinary, nullable=False),
    )
    Index("ix_plain_subject", plain.c.subject, plain.c.seq)
    meta.create_all(engine)
    insert = _BulkInsert(engine, plain, ["seq", "event_type", "subject", "data"])
    start = time.perf_counter()
    seq = 0
    for i in range(0, len(events), BATCH):
        rows = []
        for e in events[i : i + BATCH]:
            rows.append((seq, str(e.type), e.subject, e.to_cbor()))
            seq += 1
        with engine.begin() as conn:
            insert.run(conn, rows)
    elapsed = time.perf_counter() - start
    engine.dispose()
    return len(events) / elapsed


def bench_hashing(events: list[AuditEvent]) -> float:
    leaves = [e.to_cbor() for e in events]
    start = time.perf_counter()
    for data in leaves:
        hashlib.sha256(b"\x00" + data).digest()
    return len(leaves) / (time.perf_counter() - start)


def build_store(directory: Path, size: int) -> TransparencyLog:
    engine = fresh_engine(directory, f"tree{size}")
    with engine.begin() as conn:
        create_audit_tables(conn)
    log = TransparencyLog(SqlLogStore(engine))
    chunk = 50_000
    for i in range(0, size, chunk):
        records = []
        for j in range(i, min(size, i + chunk)):
            data = j.to_bytes(8, "big")
            records.append(LeafRecord(data, merkle.leaf_hash(data), "bench.synthetic", ""))
        log.store.append(records)
    return log


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def bench_proofs(log: TransparencyLog, samples: int) -> dict[str, float]:
    size = log.size()
    rnd = random.Random(size)
    root = log.root_hash()
    incl: list[float] = []
    cons: list[float] = []
    for _ in range(samples):
        index = rnd.randrange(size)
        t = time.perf_counter()
        proof = log.inclusion_proof(index, size)
        incl.append((time.perf_counter() - t) * 1000)
        if len(incl) <= 20:
            data = index.to_bytes(8, "big")
            merkle.verify_inclusion(merkle.leaf_hash(data), index, size, proof, root)
        old = rnd.randrange(1, size)
        t = time.perf_counter()
        cproof = log.consistency_proof(old, size)
        cons.append((time.perf_counter() - t) * 1000)
        if len(cons) <= 5:
            merkle.verify_consistency(old, size, log.root_hash(old), root, cproof)
    return {
        "inclusion_ms_median": statistics.median(incl),
        "inclusion_ms_p99": percentile(incl, 0.99),
        "consistency_ms_median": statistics.median(cons),
        "consistency_ms_p99": percentile(cons, 0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument("--dir", help="scratch directory for the databases (default: a temp dir)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "audit.json"))
    args = parser.parse_args()

    n_events = 60_000 if args.quick else 300_000
    rounds = 1 if args.quick else 3
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
    samples = 300 if args.quick else 2000
    directory = Path(args.dir or tempfile.mkdtemp(prefix="iotguard-bench-audit-"))
    directory.mkdir(parents=True, exist_ok=True)

    events = make_events(n_events)
    log_rates, plain_rates = [], []
    for _ in range(rounds):
        plain_rates.append(bench_plain_inserts(directory, events))
        log_rates.append(bench_log_appends(directory, events))
    log_rate, plain_rate = statistics.median(log_rates), statistics.median(plain_rates)
    hash_rate = bench_hashing(events)

    proofs: dict[str, dict[str, float]] = {}
    build_s: dict[str, float] = {}
    for size in sizes:
        t = time.perf_counter()
        tree = build_store(directory, size)
        build_s[str(size)] = time.perf_counter() - t
        proofs[str(size)] = bench_proofs(tree, samples)
        tree.store._engine.dispose()  # type: ignore[attr-defined]
        for p in directory.glob(f"tree{size}.db*"):
            p.unlink()

    largest = proofs[str(sizes[-1])]
    worst_median = max(largest["inclusion_ms_median"], largest["consistency_ms_median"])
    result = {
        "bench": "audit",
        "headline": {
            "name": "durable audit-log appends/s (SQLite, batched)",
            "unit": "appends/s",
            "value": round(log_rate),
            "baseline_name": "plain durable inserts/s of the same events (no Merkle work)",
            "baseline_value": round(plain_rate),
            "ratio": round(log_rate / plain_rate, 3),
            "goal": f"ratio >= {GOAL_RATIO}; >= {GOAL_APPENDS} appends/s; proofs < {GOAL_PROOF_MS} ms at 10M leaves",
        },
        "goals": {
            "ratio_met": log_rate / plain_rate >= GOAL_RATIO,
            "appends_per_s_vs_50k": round(log_rate / GOAL_APPENDS, 3),
            "appends_met": log_rate >= GOAL_APPENDS,
            "proof_median_ms_at_largest": round(worst_median, 4),
            "proof_met": worst_median < GOAL_PROOF_MS,
            "largest_size": sizes[-1],
        },
        "appends": {
            "events": n_events,
            "batch": BATCH,
            "rounds": rounds,
            "log_appends_per_s": [round(x) for x in log_rates],
            "plain_inserts_per_s": [round(x) for x in plain_rates],
        },
        "ceiling_sha256_leaf_hashes_per_s": round(hash_rate),
        "proofs": {k: {m: round(v, 4) for m, v in d.items()} for k, d in proofs.items()},
        "store_build_s": {k: round(v, 1) for k, v in build_s.items()},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
    }

    print(f"{'measure':58} {'value':>14}")
    print(f"{'log appends/s (durable, batched)':58} {log_rate:>14,.0f}")
    print(f"{'plain inserts/s of the same events (baseline)':58} {plain_rate:>14,.0f}")
    print(f"{'ratio log/plain (goal >= 0.5)':58} {log_rate / plain_rate:>14.3f}")
    print(f"{'appends/s vs 50,000 goal':58} {log_rate / GOAL_APPENDS:>14.2f}x")
    print(f"{'raw SHA-256 leaf hashes/s (ceiling)':58} {hash_rate:>14,.0f}")
    for size, d in proofs.items():
        for m, v in d.items():
            print(f"{f'{m} @ {int(size):,} leaves':58} {v:>14.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not args.dir:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
