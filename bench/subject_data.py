"""Cost of data at rest per subject (ADR 0405): sealed ingest, opened reads, one erasure.

One run, SQLite in a temporary directory, the hub's software key store:

1. Store: readings per second through ``SqlTelemetryStore.store_batch`` (the
   ingest transaction) in batches of 100, with the subject keyring sealing
   every body, next to the same store without a cipher (clear bodies, the
   baseline) in the same run, batch by batch alternately.
2. Read: readings per second through ``readings_after`` (bodies opened) next
   to the clear baseline.
3. Erase: wall time of one subject's erasure (its key destroyed in the key
   store, its readings deleted) with the fleet's other keys present.

Headline ratio: sealed store throughput / clear store throughput (1.0 = free).

    python bench/subject_data.py [--quick] [--out bench/results/subject_data.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2

from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.privacy_store import PrivacyStore
from iotguard.hub.stores.telemetry import SqlTelemetryStore
from iotguard.keys import SoftwareKeyStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 100


def _rows(devices: int, per_device: int) -> list[dict[str, Any]]:
    return [{"device_id": f"w{d}", "epoch": 1, "seq": s, "topic": f"t/w{d}", "received_at": T0,
             "body": cbor2.dumps({"ts": s, "f": {"heart_rate": 60 + s % 50, "location": "52.520,13.404"},
                                  "p": "research"})}
            for s in range(per_device) for d in range(devices)]


def _store_rates(stores: list[SqlTelemetryStore], rows: list[dict[str, Any]]) -> list[float]:
    """Batches stored alternately in each store, so load from other processes falls on both alike."""
    spent = [0.0] * len(stores)
    for i in range(0, len(rows), BATCH):
        for k, store in enumerate(stores):
            start = time.perf_counter()
            store.store_batch(rows[i:i + BATCH], [], {}, now=T0)
            spent[k] += time.perf_counter() - start
    return [len(rows) / s for s in spent]


def _read_rate(store: SqlTelemetryStore) -> float:
    start, n, after = time.perf_counter(), 0, 0
    while page := store.readings_after(after, limit=1000):
        n += len(page)
        after = page[-1].id
    return n / (time.perf_counter() - start)


def run(quick: bool) -> dict[str, Any]:
    devices, per_device = (50, 40) if quick else (200, 100)
    rows = _rows(devices, per_device)
    with tempfile.TemporaryDirectory() as tmp:
        clear_engine = make_engine(f"sqlite:///{Path(tmp) / 'clear.db'}")
        sealed_engine = make_engine(f"sqlite:///{Path(tmp) / 'sealed.db'}")
        for e in (clear_engine, sealed_engine):
            migrate(e)
        keys = SoftwareKeyStore(Path(tmp) / "keys", device_binding=b"bench-subject-data-binding")
        privacy = PrivacyStore(sealed_engine, keystore=keys)
        for d in range(devices):
            privacy.link_device(f"s{d}", f"w{d}", T0)
        keyring = privacy.subject_keyring()
        clear, sealed = SqlTelemetryStore(clear_engine), SqlTelemetryStore(sealed_engine, cipher=keyring)
        sealed.store_batch(rows[:devices], [], {}, now=T0)  # create every subject's key first (not timed)
        clear.store_batch(rows[:devices], [], {}, now=T0)
        rest = rows[devices:]
        clear_store, sealed_store = _store_rates([clear, sealed], rest)
        clear_read, sealed_read = _read_rate(clear), _read_rate(SqlTelemetryStore(sealed_engine, cipher=keyring))
        start = time.perf_counter()
        record = privacy.erase_subject("s0", T0, actor="bench")
        erase_s = time.perf_counter() - start
        assert record.key_shredded and record.readings_deleted == per_device
        for e in (clear_engine, sealed_engine):
            e.dispose()
    return {
        "bench": "subject_data",
        "quick": quick,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "readings": len(rest),
        "subjects": devices,
        "store_per_s": {"sealed": round(sealed_store), "clear": round(clear_store)},
        "read_per_s": {"sealed": round(sealed_read), "clear": round(clear_read)},
        "erase_one_subject_ms": round(erase_s * 1000, 1),
        "ratio": round(sealed_store / clear_store, 3),
        "ratio_is": "sealed store throughput / clear store throughput, same run",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "subject_data.json"))
    args = p.parse_args()
    result = run(args.quick)
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
