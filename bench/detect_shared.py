"""Cost of sharing the flow monitor's state between hub processes (ADR 0752), in one process.

Simulated fleet traffic (benign, a scan, benign again) goes in flow reports
of ``--batch`` flows through ``FlowIngestService``: once with the monitor's
state in this process only (a memory store: every row still encoded and
decoded, nothing written to a database) and once over a SQLite database
(what a hub process does), and the same batches through a bare
``FlowMonitor`` (the in-process path the state used to live in). Prints
flows per second (CPU time of this process and wall time) of each and the
ratio shared / in-process over the batches after the learning window
closed (the learning batches and the fit, the same work in every run, are
not timed; the compiled feature kernel is built before any timing).
The results go to ``bench/results/detect_shared.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotguard.clock import FixedClock
from iotguard.detection import Alert, FeatureExtractor, FlowBatch, FlowMonitor, MonitorConfig, encode_flow_report
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.services.sensing import ADDRESS_INVENTORY_FILE, FlowIngestService
from iotguard.hub.stores.detector_state import DetectorStateStore, MemoryDetectorStateStore, SqlDetectorStateStore
from iotguard.identity import VerifiedRequest
from iotguard.sim import traffic

T0 = 1_767_225_600.0
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RESULTS = Path(__file__).parent / "results" / "detect_shared.json"


class _Sink:
    clock = FixedClock(NOW)

    def raise_alerts(self, alerts: list[Alert]) -> list[Any]:
        return []


def _batches(devices: int, size: int) -> tuple[dict[str, str], list[FlowBatch]]:
    sims = traffic.make_fleet(per_model=max(1, devices // 4), segments=1)[:devices]
    flows = [*traffic.benign_traffic(sims, T0, 3600.0).flows, *traffic.mirai_scan(sims[0], T0 + 3610.0, 10.0).flows,
             *traffic.benign_traffic(sims, T0 + 3620.0, 3600.0, seed=5).flows]
    batch = FlowBatch.from_flows(flows)
    batch = batch.take(batch.time_order())
    return {d.address: d.device_id for d in sims}, [batch.take(slice(i, i + size)) for i in range(0, len(batch), size)]


def _timed(step: Any, batches: list[Any]) -> tuple[float, float, int]:
    """Feed ``batches`` to ``step`` (returns whether still learning); time those after learning ended."""
    k = 0
    while k < len(batches) and step(batches[k]):
        k += 1
    cpu, wall = time.process_time(), time.perf_counter()
    for b in batches[k + 1:]:
        step(b)
    return time.process_time() - cpu, time.perf_counter() - wall, k + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=12, help="simulated devices (default 12)")
    parser.add_argument("--batch", type=int, default=200, help="flows per report (default 200)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args()
    inventory, batches = _batches(args.devices, args.batch)
    config = MonitorConfig(learn_flows=2000, learn_s=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        (data_dir / ADDRESS_INVENTORY_FILE).write_text("".join(f"{a} {d}\n" for a, d in inventory.items()))
        reports = [{"flows": encode_flow_report(b)} for b in batches]

        def service_step(store: DetectorStateStore) -> Any:
            service = FlowIngestService(_Sink(), data_dir, lambda: {}, config=config, states=store)  # type: ignore[arg-type]
            return lambda i: service.report(VerifiedRequest("report_flows", "sensor-1", NOW, b"n" * 16, reports[i],
                                                            b""))["learning"]

        monitor = FlowMonitor(config, devices=inventory, models={})

        def bare_step(i: int) -> bool:
            monitor.observe(batches[i])
            return monitor.learning

        FeatureExtractor()  # the compiled kernel (if Numba is there) is built once per process, not in a timing
        engine = make_engine(f"sqlite:///{data_dir / 'hub.db'}")
        migrate(engine)
        index = list(range(len(batches)))
        bare = _timed(bare_step, index)
        memory = _timed(service_step(MemoryDetectorStateStore()), index)
        sqlite = _timed(service_step(SqlDetectorStateStore(engine)), index)
        engine.dispose()
    if not bare[2] == memory[2] == sqlite[2]:
        raise SystemExit("the learning window closed at different batches")
    flows = sum(len(b) for b in batches[bare[2]:])
    result = {"benchmark": "detect_shared", "flows_timed": flows, "batches": len(batches), "devices": args.devices,
              "learning_batches": bare[2],
              "load_average": list(os.getloadavg()),
              "flows_per_s": {name: {"cpu": round(flows / cpu, 1), "wall": round(flows / wall, 1)}
                              for name, (cpu, wall, _) in (("in_process_monitor", bare), ("shared_memory_store", memory),
                                                        ("shared_sqlite", sqlite))},
              "ratio_shared_sqlite_to_in_process_cpu": round(bare[0] / sqlite[0], 3),
              "ratio_shared_sqlite_to_in_process_wall": round(bare[1] / sqlite[1], 3)}
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
