"""Firmware update benchmark: TUF over the device channel, ngclient refreshes, a staged rollout.

Three measurements, in one run:

1. **Update checks served** (headline). A real hub (``iotguard.hub.service.Hub``:
   uvicorn, TLS 1.3, SQLite) answers the HTTP requests of a TUF "nothing new"
   refresh -- the next root (404) and ``timestamp.json`` -- as signed
   ``update_fetch`` device requests (signature, nonce, attempt limits, Cedar,
   path check, outbox drain). In the same run, the same hub process serves the
   same bytes as plain static files (Starlette ``StaticFiles`` mounted on the
   same app and TLS listener, no authentication). A load client in a separate
   process (threads, keep-alive HTTPS) runs both, interleaved. Headline ratio
   = TUF refreshes/s / plain refreshes/s (goal >= 0.5; goal >= 2,000 update
   checks/s from one hub process).
2. **One agent's ngclient refresh** over the device channel to that hub: cold
   (only the trusted root on disk: root, timestamp, snapshot, targets and the
   model's role) and warm (nothing new: next root and timestamp), medians
   (goal: warm <= 20 ms).
3. **A staged rollout** of a 1 MiB release through three cohorts (10, 50,
   100 %) to 1,000 simulated devices (``--quick``: 100): each device is
   registered in the hub's database, checks in through ``RolloutService``,
   refreshes and downloads with ``tuf.ngclient`` from the hub's
   ``FirmwareService`` in process (no HTTP), installs A/B with its self-test,
   and reports; the hub's gates advance the stages. Reported: wall time from
   start to completed.

Usage: ``python bench/update.py [--quick]`` (writes bench/results/update.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "update.json"
MODEL = "thermo-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- load client (separate process)


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one load phase: ``threads`` clients doing refreshes for ``seconds``; returns counts."""
    import httpx

    from iotguard.agent import Agent
    from iotguard.config import AgentConfig
    from iotguard.tls import client_context

    agent = Agent(AgentConfig(data_dir=spec["agent_dir"], hub_url=spec["hub_url"]), spec["device_id"])
    next_root, mode = spec["next_root"], spec["mode"]
    stop = time.monotonic() + spec["seconds"]
    counts: list[tuple[int, int]] = []
    lock = threading.Lock()

    def run() -> None:
        ok = bad = 0
        with httpx.Client(base_url=spec["hub_url"], verify=client_context(spec["ca_file"]), timeout=30) as http:
            while time.monotonic() < stop:
                if mode == "tuf":
                    r1 = http.post("/v1/firmware/fetch", json=agent._signed("update_fetch", {"path": next_root})[0])
                    r2 = http.post("/v1/firmware/fetch",
                                   json=agent._signed("update_fetch", {"path": "metadata/timestamp.json"})[0])
                else:
                    r1 = http.get(f"/bench-static/{next_root}")
                    r2 = http.get("/bench-static/metadata/timestamp.json")
                if r1.status_code == 404 and r2.status_code == 200 and r2.content == spec["timestamp"].encode():
                    ok += 1
                else:
                    bad += 1
        with lock:
            counts.append((ok, bad))

    threads = [threading.Thread(target=run) for _ in range(spec["threads"])]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {"refreshes": sum(c[0] for c in counts), "errors": sum(c[1] for c in counts), "seconds": elapsed}


def _load(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         check=True, timeout=spec["seconds"] + 120)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- the hub and one enrolled device


def _hub(root: Path) -> Any:
    from securesystemslib.signer import CryptoSigner
    from starlette.staticfiles import StaticFiles

    from iotguard.config import HubConfig
    from iotguard.hub.service import Hub

    cfg = HubConfig(data_dir=str(root / "hub"), embedded_broker_bind=f"127.0.0.1:{_free_port()}",
                    api_bind=f"127.0.0.1:{_free_port()}")
    hub = Hub(cfg)
    roots = [CryptoSigner.generate_ed25519() for _ in range(3)]
    targets, model_key = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    trusted = hub.services.firmware.initialise(root_signers=roots, root_threshold=2, targets_signer=targets,
                                               actor="bench")
    hub.services.firmware.add_model(MODEL, model_signer=model_key, targets_signer=targets, actor="bench")
    _publish(hub.services, model_key, 2, 4096)
    static = root / "static"
    for path, body in hub.services.firmware._files.load().items():  # the same bytes, as plain files
        (static / path).parent.mkdir(parents=True, exist_ok=True)
        (static / path).write_bytes(body)
    hub.app.mount("/bench-static", StaticFiles(directory=static), name="bench-static")
    hub.start()
    return hub, trusted, model_key


def _publish(services: Any, model_key: Any, version: int, size: int) -> bytes:
    import hashlib

    from iotguard.updates import FirmwareRelease

    data = f"{MODEL} firmware {version}\n".encode()
    data += hashlib.shake_256(data).digest(size - len(data))
    release = FirmwareRelease.for_image(MODEL, version, data, end_of_support=date(2031, 12, 31),
                                        disclosure_contact="https://example.org/security",
                                        measurements={"app": hashlib.sha256(data).hexdigest()})
    services.firmware.publish(release, data, model_signer=model_key, actor="bench")
    return data


def _refresh_times(agent: Any, trusted: bytes, root: Path, runs: int) -> dict[str, float]:
    from tuf.ngclient import Updater

    from iotguard.agent.firmware import DEFAULT_CONFIG
    from iotguard.agent.update_channel import REPOSITORY_URL, device_update_channel

    fetcher, _ = device_update_channel(agent)

    def updater(metadata_dir: Path) -> Updater:
        return Updater(metadata_dir=str(metadata_dir), metadata_base_url=f"{REPOSITORY_URL}/metadata/",
                       target_dir=str(root / "targets"), target_base_url=f"{REPOSITORY_URL}/targets/",
                       fetcher=fetcher, config=DEFAULT_CONFIG, bootstrap=None)

    cold, warm = [], []
    for i in range(runs):
        d = root / f"cold-{i}"
        d.mkdir(parents=True)
        (d / "root.json").write_bytes(trusted)
        t0 = time.perf_counter()
        u = updater(d)
        u.refresh()
        assert u.get_targetinfo(f"{MODEL}/{MODEL}-2.img") is not None
        cold.append((time.perf_counter() - t0) * 1000)
    for _ in range(runs):
        t0 = time.perf_counter()
        updater(root / "cold-0").refresh()
        warm.append((time.perf_counter() - t0) * 1000)
    return {"cold_ms_median": round(statistics.median(cold), 2), "warm_ms_median": round(statistics.median(warm), 2),
            "cold_ms_min": round(min(cold), 2), "warm_ms_min": round(min(warm), 2), "runs": runs}


# ---------------------------------------------------------------- the staged rollout


def _rollout(root: Path, devices: int, size: int) -> dict[str, Any]:
    from securesystemslib.signer import CryptoSigner
    from sqlalchemy import update

    from iotguard.agent.firmware import FirmwareUpdateClient, TransportFetcher
    from iotguard.config import HubConfig
    from iotguard.hub.compose import build_hub_services
    from iotguard.hub.schema import devices as devices_table
    from iotguard.keys.software import SoftwareKeyStore
    from iotguard.rollout import RolloutState

    services = build_hub_services(HubConfig(data_dir=str(root / "rollout-hub")))
    roots = [CryptoSigner.generate_ed25519() for _ in range(3)]
    targets, model_key = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    trusted = services.firmware.initialise(root_signers=roots, root_threshold=2, targets_signer=targets, actor="b")
    services.firmware.add_model(MODEL, model_signer=model_key, targets_signer=targets, actor="bench")
    ids = [f"sim-{i:05d}" for i in range(devices)]
    for device_id in ids:
        services.lifecycle.add_device(device_id, MODEL)
    with services.store.engine.begin() as conn:  # simulated devices: registered as enrolled, no agent process
        conn.execute(update(devices_table).where(devices_table.c.device_id.in_(ids)).values(status="active"))
    base = "https://hub.bench/firmware"
    fetcher = TransportFetcher(lambda url: services.firmware.file(url[len(base) + 1:]))
    # One key store holds the anti-rollback counter of every simulated device (it only ever rises to 2).
    counters = SoftwareKeyStore(root / "counters", device_binding=b"bench device key store binding 1")
    _publish(services, model_key, 2, size)
    t0 = time.perf_counter()
    campaign = services.rollouts.start(MODEL, 2, actor="bench", stages=(10.0, 50.0, 100.0))
    rounds = installs = 0
    stages_seen = []
    running = dict.fromkeys(ids, 1)  # each simulated device's committed version
    while campaign.active and rounds < 10:
        rounds += 1
        for device_id in ids:
            offered = services.rollouts.check_in(device_id, version=running[device_id], attempted=0,
                                                 outcome="none")["install"]
            if not offered:
                continue
            data_dir = root / "devices" / device_id
            FirmwareUpdateClient.trust(data_dir, trusted)
            client = FirmwareUpdateClient(data_dir, model=MODEL, counters=counters, fetcher=fetcher, base_url=base,
                                          self_test=lambda _s, _i: None)
            client.slots.provision(b"factory firmware 1", 1)
            outcome = client.install(offered)
            services.rollouts.check_in(device_id, version=outcome.version, attempted=offered, outcome="committed")
            running[device_id] = outcome.version
            installs += 1
            shutil.rmtree(data_dir)  # keep the disk bounded: the device is done
        campaign = next(c for c in services.rollouts.tick() if c.rollout_id == campaign.rollout_id)
        stages_seen.append(campaign.percent)
    elapsed = time.perf_counter() - t0
    status = services.rollouts.status(campaign.rollout_id)
    services.store.engine.dispose()
    return {"devices": devices, "image_bytes": size, "stages": [10.0, 50.0, 100.0], "rounds": rounds,
            "installs": installs, "state": str(campaign.state), "committed": status.health.committed,
            "seconds": round(elapsed, 2), "stage_after_each_round": stages_seen,
            "completed": campaign.state is RolloutState.COMPLETED}


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a minute")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    from iotguard.agent import Agent
    from iotguard.config import AgentConfig

    seconds, rounds, threads = (4.0, 1, 4) if args.quick else (10.0, 3, 8)
    devices = 100 if args.quick else 1000
    tmp = Path(tempfile.mkdtemp(prefix="iotguard-bench-update-"))
    try:
        hub, trusted, _key = _hub(tmp)
        try:
            agent_dir = tmp / "agent"
            agent = Agent(AgentConfig(data_dir=str(agent_dir), hub_url=hub.api_url), "bench-dev-1")
            agent.enroll(str(hub.lifecycle.add_device("bench-dev-1", MODEL)))
            root_version = max(int(p.split("/")[1].split(".")[0]) for p in hub.services.firmware._files.load()
                               if p.endswith(".root.json"))
            timestamp = hub.services.firmware.file("metadata/timestamp.json")
            assert timestamp is not None
            spec = {"agent_dir": str(agent_dir), "hub_url": hub.api_url, "device_id": "bench-dev-1",
                    "ca_file": str(agent_dir / "ca.pem"), "next_root": f"metadata/{root_version + 1}.root.json",
                    "timestamp": timestamp.decode(), "seconds": seconds, "threads": threads}
            phases: dict[str, list[dict[str, Any]]] = {"tuf": [], "plain": []}
            for _ in range(rounds):  # interleaved, so drift on a shared machine hits both alike
                for mode in ("plain", "tuf"):
                    phases[mode].append(_load({**spec, "mode": mode}))
            refresh = _refresh_times(agent, trusted, tmp / "refresh", 5 if args.quick else 20)
            agent.close()
        finally:
            hub.stop()

        def rate(mode: str) -> float:
            return sum(p["refreshes"] for p in phases[mode]) / sum(p["seconds"] for p in phases[mode])

        tuf_rate, plain_rate = rate("tuf"), rate("plain")
        rollout = _rollout(tmp, devices, 1024 * 1024)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "bench": "update",
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "headline": {"ratio_tuf_over_plain": round(tuf_rate / plain_rate, 3), "goal_ratio": 0.5,
                     "tuf_refreshes_per_s": round(tuf_rate, 1), "tuf_requests_per_s": round(2 * tuf_rate, 1),
                     "goal_update_checks_per_s": 2000},
        "nothing_new_refresh": {
            "requests_per_refresh": 2, "load_threads": threads, "seconds_per_phase": seconds, "rounds": rounds,
            "tuf": {"refreshes_per_s": round(tuf_rate, 1), "phases": phases["tuf"]},
            "plain_static": {"refreshes_per_s": round(plain_rate, 1), "phases": phases["plain"]},
        },
        "ngclient_refresh": {**refresh, "goal_warm_ms": 20},
        "rollout": rollout,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    h = result["headline"]
    print(f"nothing-new refresh: TUF over the device plane {tuf_rate:.1f}/s, plain static {plain_rate:.1f}/s "
          f"-> ratio {h['ratio_tuf_over_plain']} (goal >= 0.5; goal >= 2000 checks/s)")
    print(f"ngclient refresh: cold {refresh['cold_ms_median']} ms, warm {refresh['warm_ms_median']} ms (goal <= 20)")
    print(f"rollout: 1 MiB to {devices} devices through 3 cohorts: {rollout['state']} in {rollout['seconds']} s "
          f"({rollout['rounds']} rounds, {rollout['installs']} installs)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
