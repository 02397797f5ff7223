"""Benchmark: console page render time against the JSON API returning the same data, at 1,000 and 10,000 devices.

One hub (SQLite, the default deployment) per fleet size, built with ``build_hub_services`` and
``create_app`` exactly as the hub process builds them; requests go through the whole ASGI stack
in process (Starlette test client: routing, session or bearer authentication, the Cedar decision,
the SQL query, Jinja2 rendering or JSON encoding), so the network is left out of both sides.

* fleet overview: ``GET /console/fleet?after=ID`` (50 devices a page, keyset paging from a random
  device id each time, with counts, trust tier, last seen, firmware and the page's position)
  against ``GET /v1/devices?limit=50&offset=...`` returning the same page;
* device detail: ``GET /console/devices/ID`` (identity, certificate, posture, attestation,
  alerts, audit trail with inclusion proofs) against ``GET /v1/devices/ID``.

The fleet is written straight into the registry and posture tables (enrolling 10,000 agents
would measure enrollment, not the console). Page and API requests alternate (interleaved in one
loop, so the machine's load falls on both alike). p50 and p99 in milliseconds of wall time, and
the mean CPU time of this process per request (``time.process_time``).

Headline: the JSON API's p99 / the fleet page's p99 at 10,000 devices (higher is better; the
goal is page p99 <= 200 ms and <= 2x the API, i.e. ratio >= 0.5).

Usage: ``python bench/console.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert

from iotguard.config import HubConfig
from iotguard.hub.api import create_app
from iotguard.hub.compose import build_hub_services
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.policy_store import device_posture
from iotguard.hub.schema import devices

RESULTS = Path(__file__).resolve().parent / "results" / "console.json"
SIZES = (1000, 10_000)
PAGE = 50
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _populate(url: str, n: int) -> None:
    engine = make_engine(url)
    migrate(engine)
    tiers = ("verified", "unverified", "degraded", "failed")
    with engine.begin() as c:
        c.execute(insert(devices), [{"device_id": f"dev-{i:05d}", "model": "thermo-1", "serial": f"SN{i}",
                                     "segment": f"plant-{i % 8}", "status": "active", "created_at": T0}
                                    for i in range(n)])
        c.execute(insert(device_posture), [{"device_id": f"dev-{i:05d}", "segment": f"plant-{i % 8}",
                                            "model": "thermo-1", "trust_tier": tiers[i % 4], "risk_score": i % 50,
                                            "cert_not_after": None, "attested_at": None, "declared_location": "",
                                            "quarantined": i % 97 == 0, "updated_at": T0} for i in range(n)])
    engine.dispose()


def _summary(samples: list[float], cpu: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
            "cpu_mean_ms": round(statistics.fmean(cpu), 2), "n": len(samples)}


def _interleaved(page: Callable[[], Any], api: Callable[[], Any], repeats: int
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """Time ``page`` and ``api`` alternately, ``repeats`` times each."""
    wall: dict[str, list[float]] = {"page": [], "api": []}
    cpu: dict[str, list[float]] = {"page": [], "api": []}
    for _ in range(repeats):
        for name, call in (("page", page), ("api", api)):
            start, start_cpu = time.perf_counter(), time.process_time()
            r = call()
            wall[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.process_time() - start_cpu) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"request failed: {r.status_code} {r.text[:200]}")
    return _summary(wall["page"], cpu["page"]), _summary(wall["api"], cpu["api"])


def measure(n: int, repeats: int, tmp: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp / f'hub-{n}.db'}"
    _populate(url, n)
    services = build_hub_services(HubConfig(data_dir=str(tmp / f"hub-{n}")), database_url=url)
    app = create_app(services)
    secret = services.store.create_api_token("bench", "security-admin", now=services.clock.now())
    api = TestClient(app, base_url="https://testserver", headers={"Authorization": f"Bearer {secret}"})
    browser = TestClient(app, base_url="https://testserver", follow_redirects=False)
    form = browser.get("/console/login").text
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', form)
    assert login_csrf is not None
    assert browser.post("/console/login", data={"token": secret, "login_csrf": login_csrf.group(1)}).status_code == 303
    rng = random.Random(n)
    pages = max(1, n // PAGE)

    fleet_page = [0]  # the page both sides of one interleaved pair ask for

    def page_fleet() -> Any:
        fleet_page[0] = k = rng.randrange(pages)
        cursor = {"after": f"dev-{k * PAGE - 1:05d}"} if k else {}
        r = browser.get("/console/fleet", params={"size": PAGE, **cursor})
        if f"showing {k * PAGE + 1}\u2013" not in r.text:  # an en dash, as the page prints
            raise SystemExit(f"fleet page {k} did not start at device {k * PAGE}")
        return r

    def api_fleet() -> Any:
        return api.get("/v1/devices", params={"limit": PAGE, "offset": fleet_page[0] * PAGE})

    def page_device() -> Any:
        return browser.get(f"/console/devices/dev-{rng.randrange(n):05d}")

    def api_device() -> Any:
        return api.get(f"/v1/devices/dev-{rng.randrange(n):05d}")

    for warm in (page_fleet, api_fleet, page_device, api_device):
        warm()
    fleet = _interleaved(page_fleet, api_fleet, repeats)
    device = _interleaved(page_device, api_device, repeats)
    out = {"devices": n, "fleet_page": fleet[0], "fleet_api": fleet[1], "device_page": device[0],
           "device_api": device[1]}
    services.store.engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (about a minute)")
    args = parser.parse_args()
    repeats = 60 if args.quick else 300
    with tempfile.TemporaryDirectory(prefix="iotguard-bench-console-") as tmp:
        runs = [measure(n, repeats, Path(tmp)) for n in SIZES]
    print(f"{'devices':>8} {'what':<14} {'page p50':>9} {'page p99':>9} {'API p50':>8} {'API p99':>8}  (ms)")
    for run in runs:
        for what in ("fleet", "device"):
            page, api = run[f"{what}_page"], run[f"{what}_api"]
            print(f"{run['devices']:>8} {what:<14} {page['p50_ms']:>9} {page['p99_ms']:>9} "
                  f"{api['p50_ms']:>8} {api['p99_ms']:>8}")
    big = runs[-1]
    ratio = round(big["fleet_api"]["p99_ms"] / big["fleet_page"]["p99_ms"], 3)
    result = {
        "benchmark": "console", "quick": args.quick, "platform": platform.platform(), "machine": platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "page_size": PAGE, "paging": "keyset (after a device id)", "requests_per_measurement": repeats,
        "runs": runs,
        "goals": {"fleet_page_p99_le_200ms_at_10k": big["fleet_page"]["p99_ms"] <= 200,
                  "fleet_page_p99_le_2x_api_at_10k": big["fleet_page"]["p99_ms"] <= 2 * big["fleet_api"]["p99_ms"],
                  "device_page_p99_le_200ms_at_10k": big["device_page"]["p99_ms"] <= 200},
        "headline": {"name": "fleet overview page p99 at 10,000 devices (inverted: API p99 / page p99)",
                     "unit": "ms", "value": big["fleet_page"]["p99_ms"],
                     "baseline_name": "JSON API GET /v1/devices p99, same page of the same fleet",
                     "baseline_value": big["fleet_api"]["p99_ms"], "ratio": ratio,
                     "goal": "page p99 <= 200 ms and <= 2x the API (ratio >= 0.5)"},
    }
    print(f"headline: API p99 / page p99 at 10,000 devices = {ratio} (goal >= 0.5)")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
