"""Firmware update benchmark: TUF over the device channel, ngclient refreshes, a staged rollout.

Three measurements, in one run:

1. **Update checks served** (headline). A real hub (``iotguard.hub.service.Hub``:
   uvicorn, TLS 1.3, SQLite) answers the HTTP requests of a TUF "nothing new"
   refresh -- the next root (404) and ``timestamp.json`` -- as GETs over mutual
   TLS with the device's transport certificate (ADR 1220: certificate checked
   against the registry, Cedar ``update_fetch`` cached per device, no database
   write). In the same run, the same hub process serves the same bytes as plain
   static files (Starlette ``StaticFiles``, placed where the repository front
   sits, no authentication) over the same listener. Load-client processes
   (threads, each a raw keep-alive HTTP/1.1 client over ``ssl``) run both,
   interleaved; the hub's CPU per refresh comes from ``getrusage``. Headline
   ratio = TUF refreshes/s / plain refreshes/s (goal >= 0.5; goal >= 2,000
   update checks/s from one hub process).
2. **One agent's ngclient refresh** over its pooled mTLS connection, in its own
   process: cold (only the trusted root on disk: root, timestamp, snapshot,
   targets and the model's role) and warm (nothing new: next root and
   timestamp), medians (goal: warm <= 20 ms).
3. **A staged rollout** of a 1 MiB release through three cohorts (10, 50,
   100 %) to 1,000 simulated devices (``--quick``: 100): each device is
   registered in the hub's database, checks in through ``RolloutService``,
   refreshes and downloads with ``tuf.ngclient`` from the hub's
   ``FirmwareService`` in process (no HTTP), installs A/B with its self-test,
   and reports; the hub's gates advance the stages. Reported: wall time from
   start to completed.

Usage: ``python bench/update.py [--quick] [--no-rollout]`` (writes bench/results/update.json).
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
    """Run one load phase: ``threads`` keep-alive TLS connections doing refreshes for ``seconds``; returns counts.

    The client is a raw keep-alive HTTP/1.1 client over ``ssl`` (one request in flight per connection), so
    that the load client, not the hub, is not what runs out of CPU first. Both modes present the device's
    transport certificate, so the TLS work is the same; only the route differs.
    """
    import socket
    import ssl
    from urllib.parse import urlsplit

    from iotguard.tls import client_context

    url = urlsplit(spec["hub_url"])
    host, port = url.hostname or "127.0.0.1", url.port or 443
    prefix = spec["prefix"]
    paths = (f"{prefix}/{spec['next_root']}", f"{prefix}/metadata/timestamp.json")
    requests = [f"GET {p} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for p in paths]
    want = spec["timestamp"].encode()
    context = client_context(spec["ca_file"], certfile=spec["cert_file"])
    stop = time.monotonic() + spec["seconds"]
    counts: list[tuple[int, int]] = []
    lock = threading.Lock()

    def answer(tls: ssl.SSLSocket, buffer: bytearray) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in buffer:
            chunk = tls.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buffer += chunk
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        lengths = [int(v) for k, _s, v in (ln.partition(b":") for ln in lines[1:]) if k.lower() == b"content-length"]
        if not lengths:
            raise ConnectionError(f"HTTP {status} without a content length")
        length = lengths[0]
        body = bytearray(rest)
        while len(body) < length:
            chunk = tls.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            body += chunk
        buffer[:] = body[length:]
        return status, bytes(body[:length])

    def run() -> None:
        ok = bad = 0
        while time.monotonic() < stop:  # a connection the hub closed counts as an error and is reopened
            try:
                with socket.create_connection((host, port)) as raw, \
                        context.wrap_socket(raw, server_hostname=host) as tls:
                    buffer = bytearray()
                    while time.monotonic() < stop:
                        tls.sendall(requests[0])
                        s1, _b1 = answer(tls, buffer)
                        tls.sendall(requests[1])
                        s2, b2 = answer(tls, buffer)
                        if s1 == 404 and s2 == 200 and b2 == want:
                            ok += 1
                        else:
                            bad += 1
            except (OSError, ConnectionError, ValueError):
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
    """One phase from ``spec["clients"]`` load-client processes; adds the hub's CPU seconds (this process)."""
    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    before = cpu()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE,
                              text=True) for _ in range(spec["clients"])]
    outs = [json.loads(p.communicate(timeout=spec["seconds"] + 120)[0].strip().splitlines()[-1]) for p in procs]
    hub_cpu = cpu() - before
    refreshes = sum(o["refreshes"] for o in outs)
    return {"refreshes": refreshes, "errors": sum(o["errors"] for o in outs),
            "seconds": max(o["seconds"] for o in outs), "hub_cpu_s": round(hub_cpu, 3),
            "hub_cpu_us_per_refresh": round(1e6 * hub_cpu / max(1, refreshes), 1)}


# ---------------------------------------------------------------- the hub and one enrolled device


class _StaticFront:
    """The baseline's place on the listener: ``/bench-static/...`` served by Starlette ``StaticFiles`` in front
    of the same application stack as the repository's reads (before the API's middleware and route table)."""

    prefix = "/bench-static"

    def __init__(self, files: Any, app: Any) -> None:
        self.files, self.app = files, app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix + "/"):
            await self.files({**scope, "root_path": self.prefix}, receive, send)
        else:
            await self.app(scope, receive, send)


def _hub(root: Path) -> Any:
    from securesystemslib.signer import CryptoSigner
    from starlette.middleware.exceptions import ExceptionMiddleware
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
    # Where the repository front sits; Starlette's exception middleware turns a missing file into its 404.
    hub.asgi = _StaticFront(ExceptionMiddleware(StaticFiles(directory=static)), hub.asgi)
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


def _refresh_times(spec: dict[str, Any]) -> dict[str, float]:
    """One agent's cold and warm ngclient refreshes (run in its own process, as a device would be)."""
    from tuf.ngclient import Updater

    from iotguard.agent import Agent
    from iotguard.agent.firmware import DEFAULT_CONFIG
    from iotguard.agent.update_channel import REPOSITORY_URL, device_update_channel
    from iotguard.config import AgentConfig

    agent = Agent(AgentConfig(data_dir=spec["agent_dir"], hub_url=spec["hub_url"]), spec["device_id"])
    root, runs, trusted = Path(spec["root"]), int(spec["runs"]), bytes.fromhex(spec["trusted"])
    fetcher, _ = device_update_channel(agent)

    def updater(metadata_dir: Path) -> Updater:
        return Updater(metadata_dir=str(metadata_dir), metadata_base_url=f"{REPOSITORY_URL}/metadata/",
                       target_dir=str(root / "targets"), target_base_url=f"{REPOSITORY_URL}/targets/",
                       fetcher=fetcher, config=DEFAULT_CONFIG, bootstrap=None)

    cold, warm, warm_cpu = [], [], []
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
        t0, c0 = time.perf_counter(), time.process_time()
        updater(root / "cold-0").refresh()
        warm.append((time.perf_counter() - t0) * 1000)
        warm_cpu.append((time.process_time() - c0) * 1000)
    return {"cold_ms_median": round(statistics.median(cold), 2), "warm_ms_median": round(statistics.median(warm), 2),
            "cold_ms_min": round(min(cold), 2), "warm_ms_min": round(min(warm), 2),
            "warm_agent_cpu_ms_median": round(statistics.median(warm_cpu), 2), "runs": runs,
            "agent_process": "separate from the hub's (as on a device); one pooled keep-alive mTLS connection"}


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
    parser.add_argument("--no-rollout", action="store_true", help="skip the staged rollout (part 3)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--refresh-worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.refresh_worker:
        print(json.dumps(_refresh_times(json.loads(args.refresh_worker))))
        return 0

    from iotguard.agent import Agent
    from iotguard.agent.update_channel import REPOSITORY_ROUTE
    from iotguard.config import AgentConfig

    seconds, rounds, threads, clients = (4.0, 2, 4, 2) if args.quick else (10.0, 3, 4, 2)
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
            spec = {"hub_url": hub.api_url, "ca_file": str(agent_dir / "ca.pem"),
                    "cert_file": str(agent_dir / "transport.pem"),
                    "next_root": f"metadata/{root_version + 1}.root.json",
                    "timestamp": timestamp.decode(), "seconds": seconds, "threads": threads, "clients": clients}
            prefixes = {"tuf": REPOSITORY_ROUTE, "plain": "/bench-static"}
            phases: dict[str, list[dict[str, Any]]] = {"tuf": [], "plain": []}
            for _ in range(rounds):  # interleaved, so drift on a shared machine hits both alike
                for mode in ("plain", "tuf"):
                    phases[mode].append(_load({**spec, "prefix": prefixes[mode]}))
            agent.close()
            refresh_spec = {"agent_dir": str(agent_dir), "hub_url": hub.api_url, "device_id": "bench-dev-1",
                            "root": str(tmp / "refresh"), "runs": 5 if args.quick else 20, "trusted": trusted.hex()}
            out = subprocess.run([sys.executable, __file__, "--refresh-worker", json.dumps(refresh_spec)],
                                 capture_output=True, text=True, check=True, timeout=600)
            refresh = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            hub.stop()

        def rate(mode: str) -> float:
            return sum(p["refreshes"] for p in phases[mode]) / sum(p["seconds"] for p in phases[mode])

        def cpu_per_refresh(mode: str) -> float:
            return 1e6 * sum(p["hub_cpu_s"] for p in phases[mode]) / max(1, sum(p["refreshes"] for p in phases[mode]))

        tuf_rate, plain_rate = rate("tuf"), rate("plain")
        tuf_cpu, plain_cpu = cpu_per_refresh("tuf"), cpu_per_refresh("plain")
        rollout = _rollout(tmp, devices, 1024 * 1024) if not args.no_rollout else {"skipped": True}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "bench": "update",
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "headline": {"ratio_tuf_over_plain": round(tuf_rate / plain_rate, 3), "goal_ratio": 0.5,
                     "tuf_refreshes_per_s": round(tuf_rate, 1), "tuf_requests_per_s": round(2 * tuf_rate, 1),
                     "goal_update_checks_per_s": 2000,
                     "hub_cpu_ratio_plain_over_tuf": round(plain_cpu / tuf_cpu, 3),
                     "tuf_refreshes_per_hub_cpu_s": round(1e6 / tuf_cpu, 1)},
        "nothing_new_refresh": {
            "requests_per_refresh": 2, "load_clients": clients, "load_threads_per_client": threads,
            "seconds_per_phase": seconds, "rounds": rounds,
            "transport": "GET over one keep-alive mTLS connection per load thread (the device's transport "
                         "certificate), both modes on the hub's API listener",
            "tuf": {"refreshes_per_s": round(tuf_rate, 1), "hub_cpu_us_per_refresh": round(tuf_cpu, 1),
                    "phases": phases["tuf"]},
            "plain_static": {"refreshes_per_s": round(plain_rate, 1), "hub_cpu_us_per_refresh": round(plain_cpu, 1),
                             "phases": phases["plain"]},
        },
        "ngclient_refresh": {**refresh, "goal_warm_ms": 20},
        "rollout": rollout,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    h = result["headline"]
    print(f"nothing-new refresh: TUF over mTLS {tuf_rate:.1f}/s, plain static {plain_rate:.1f}/s "
          f"-> ratio {h['ratio_tuf_over_plain']} (goal >= 0.5; goal >= 2000 checks/s); hub CPU per refresh "
          f"{tuf_cpu:.0f} us TUF, {plain_cpu:.0f} us plain (TUF {h['tuf_refreshes_per_hub_cpu_s']}/CPU-s)")
    print(f"ngclient refresh: cold {refresh['cold_ms_median']} ms, warm {refresh['warm_ms_median']} ms (goal <= 20)")
    if not args.no_rollout:
        print(f"rollout: 1 MiB to {devices} devices through 3 cohorts: {rollout['state']} in {rollout['seconds']} s "
              f"({rollout['rounds']} rounds, {rollout['installs']} installs)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
