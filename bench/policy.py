"""Policy decision point benchmark: iotguard engine vs a bare cedarpy call.

Workload: a realistic ingest mix over 10,000 devices in 8 segments — mostly
devices publishing their own telemetry, some attestation traffic and command
subscriptions, a few lateral attempts — with posture changes (risk score,
trust tier, quarantine) arriving during the run and invalidating cached
decisions.

Measured in the same run, on the same requests:

* ``iotguard decide`` over the whole mix (cache hits and misses as they come),
  and ``decide_batch`` in ingest batches of 100;
* per-call latency of cached decisions and of uncached ones (``decide_uncached``:
  prebuilt per-device entities, parsed policy set, no cache);
* the bare call: ``cedarpy.is_authorized(request, policy_text, entities)``
  with the entities and context serialised for each request, as a caller
  without iotguard would; plus, for reference, the same with a pre-parsed
  ``cedarpy.PolicySet``.

Headline: iotguard decisions/s on the mix / bare cedarpy decisions/s.
Goals: ratio >= 10; cached p99 <= 20 us; uncached mean <= 2x the bare call.

Usage: python bench/policy.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cedarpy

from iotguard.policy import (
    AccessRequest,
    PolicyEngine,
    Posture,
    PostureStore,
    default_policy_set,
)

DEVICES = 10_000
SEGMENTS = [f"seg-{i}" for i in range(8)]
RESULTS = Path(__file__).parent / "results" / "policy.json"


def build_fleet(now: datetime, rng: random.Random) -> PostureStore:
    postures = []
    for i in range(DEVICES):
        postures.append(
            Posture(
                device_id=f"dev-{i:05d}",
                segment=SEGMENTS[i % len(SEGMENTS)],
                model="thermo-1",
                trust_tier="verified",
                risk_score=rng.randint(0, 30),
                cert_not_after=now + timedelta(days=30, seconds=rng.randint(0, 86400)),
                attested_at=now - timedelta(seconds=rng.randint(0, 120)),
            )
        )
    return PostureStore(postures)


def build_mix(store: PostureStore, n: int, rng: random.Random) -> list[AccessRequest]:
    devices = sorted(p.device_id for p in store)
    segment = {p.device_id: p.segment for p in store}
    out: list[AccessRequest] = []
    for _ in range(n):
        d = rng.choice(devices)
        s = segment[d]
        r = rng.random()
        if r < 0.93:
            out.append(AccessRequest.device(d, "publish", f"iotguard/{s}/{d}/telemetry"))
        elif r < 0.96:
            out.append(AccessRequest.device(d, "publish", f"iotguard/attest/{d}/evidence"))
        elif r < 0.98:
            out.append(AccessRequest.device(d, "subscribe", f"iotguard/{s}/{d}/cmd"))
        else:
            victim = rng.choice(devices)
            out.append(AccessRequest.device(d, "publish", f"iotguard/{segment[victim]}/{victim}/telemetry"))
    return out


def posture_change(store: PostureStore, rng: random.Random, now: datetime) -> None:
    d = f"dev-{rng.randrange(DEVICES):05d}"
    r = rng.random()
    if r < 0.6:
        store.update(d, risk_score=rng.randint(0, 100))
    elif r < 0.8:
        store.update(d, trust_tier=rng.choice(["verified", "degraded", "failed"]), attested_at=now)
    elif r < 0.9:
        store.quarantine(d)
    else:
        store.release(d)


# ------------------------------------------------------------ the bare call


def bare_inputs(store: PostureStore, req: AccessRequest, now: datetime) -> tuple[dict[str, Any], list[Any]]:
    """What a caller without iotguard builds for each request: entities and context."""
    p = store.require(req.principal_id)
    seg = "quarantine" if p.quarantined else p.segment
    parts = req.resource_id.split("/")
    topic_attrs: dict[str, Any] = {"kind": "unknown", "direction": "none"}
    if parts[1] == "attest":
        topic_attrs = {"kind": "attestation", "direction": "up", "device": {"__entity": {"type": "Device", "id": parts[2]}}}
    elif parts[-1] in ("telemetry", "cmd"):
        topic_attrs = {
            "kind": "telemetry" if parts[-1] == "telemetry" else "command",
            "direction": "up" if parts[-1] == "telemetry" else "down",
            "device": {"__entity": {"type": "Device", "id": parts[2]}},
            "segment": {"__entity": {"type": "Segment", "id": parts[1]}},
        }
    entities = [
        {
            "uid": {"type": "Device", "id": p.device_id},
            "attrs": {"segment": {"__entity": {"type": "Segment", "id": seg}}, "model": p.model},
            "parents": [{"type": "Segment", "id": seg}],
        },
        {
            "uid": {"type": "Segment", "id": seg},
            "attrs": {"quarantined": seg == "quarantine", "sites": [], "update_window_start": 0, "update_window_end": 24},
            "parents": [],
        },
        {"uid": {"type": "Topic", "id": req.resource_id}, "attrs": topic_attrs, "parents": []},
    ]
    remaining = (p.cert_not_after - now).total_seconds() if p.cert_not_after else 0
    fresh = p.trust_tier == "verified" and p.attested_at is not None and 0 <= (now - p.attested_at).total_seconds() < 300
    request = {
        "principal": f'Device::"{p.device_id}"',
        "action": f'Action::"{req.action}"',
        "resource": {"type": "Topic", "id": req.resource_id},
        "context": {
            "trust_tier": p.trust_tier,
            "risk_score": p.risk_score,
            "cert_valid": remaining > 0,
            "cert_days_left": -int(-remaining // 86400) if remaining > 0 else 0,
            "fresh_attestation": fresh,
            "hour_utc": now.hour,
            "declared_location": p.declared_location,
        },
    }
    return request, entities


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller run (about a minute)")
    args = ap.parse_args()
    n_mix = 60_000 if args.quick else 300_000
    n_bare = 600 if args.quick else 3_000
    n_lat = 20_000 if args.quick else 100_000
    change_every = 500

    rng = random.Random(7)
    now = datetime.now(tz=UTC)
    policy_text = default_policy_set().text
    store = build_fleet(now, rng)
    engine = PolicyEngine(default_policy_set(), posture=store)
    mix = build_mix(store, n_mix, rng)
    print(f"fleet {DEVICES} devices / {len(SEGMENTS)} segments; mix {n_mix} requests; "
          f"a posture change every {change_every} requests")

    # --- iotguard on the mix, single decisions (cache hits and misses as they come)
    change_rng = random.Random(11)
    t0 = time.perf_counter()
    allowed = 0
    for i, req in enumerate(mix):
        if i % change_every == change_every - 1:
            posture_change(store, change_rng, now)
        allowed += engine.decide(req).allowed
    t_mix = time.perf_counter() - t0
    mix_rate = n_mix / t_mix
    print(f"iotguard decide on mix: {mix_rate:,.0f} decisions/s ({allowed / n_mix:.1%} allowed)")

    # --- the same mix in ingest batches of 100 (fresh engine and fleet)
    store_b = build_fleet(now, random.Random(7))
    engine_b = PolicyEngine(default_policy_set(), posture=store_b)
    change_rng = random.Random(11)
    t0 = time.perf_counter()
    for start in range(0, n_mix, 100):
        if start and start % change_every == 0:
            posture_change(store_b, change_rng, now)
        engine_b.decide_batch(mix[start:start + 100])
    batch_rate = n_mix / (time.perf_counter() - t0)
    print(f"iotguard decide_batch(100) on mix: {batch_rate:,.0f} decisions/s")

    # --- bare cedarpy on a sample of the same requests, checking the decisions agree
    sample = mix[:: max(1, n_mix // n_bare)][:n_bare]
    bare_lat: list[float] = []
    disagreements = 0
    for req in sample:
        t = time.perf_counter_ns()
        request, entities = bare_inputs(store, req, now)
        res = cedarpy.is_authorized(request, policy_text, entities)
        bare_lat.append((time.perf_counter_ns() - t) / 1000)
        disagreements += res.allowed != engine.decide_uncached(req, now=now).allowed
    bare_rate = 1e6 / statistics.fmean(bare_lat)
    print(f"bare cedarpy.is_authorized: {bare_rate:,.0f} decisions/s, p50 {pct(bare_lat, .5):.0f} us, "
          f"p99 {pct(bare_lat, .99):.0f} us; disagreements with iotguard: {disagreements}")

    parsed = cedarpy.PolicySet.from_str(policy_text)
    pre_lat: list[float] = []
    for req in sample:
        t = time.perf_counter_ns()
        request, entities = bare_inputs(store, req, now)
        cedarpy.is_authorized(request, parsed, entities)
        pre_lat.append((time.perf_counter_ns() - t) / 1000)
    print(f"bare cedarpy with pre-parsed PolicySet: {1e6 / statistics.fmean(pre_lat):,.0f} decisions/s, "
          f"p50 {pct(pre_lat, .5):.0f} us")

    # --- uncached latency on the same sample
    unc_lat: list[float] = []
    for req in sample:
        t = time.perf_counter_ns()
        engine.decide_uncached(req)
        unc_lat.append((time.perf_counter_ns() - t) / 1000)
    print(f"iotguard uncached: p50 {pct(unc_lat, .5):.1f} us, p99 {pct(unc_lat, .99):.1f} us, "
          f"mean {statistics.fmean(unc_lat):.1f} us")

    # --- cached latency: warm the cache, then time hits only
    hot = mix[:n_lat]
    for req in hot:
        engine.decide(req)
    cached_lat: list[float] = []
    pc = time.perf_counter_ns
    for req in hot:
        t = pc()
        engine.decide(req)
        cached_lat.append((pc() - t) / 1000)
    print(f"iotguard cached: p50 {pct(cached_lat, .5):.2f} us, p99 {pct(cached_lat, .99):.2f} us")

    ratio = mix_rate / bare_rate
    uncached_vs_bare = statistics.fmean(unc_lat) / statistics.fmean(bare_lat)
    goals = {
        "ratio_ge_10": ratio >= 10,
        "cached_p99_le_20us": pct(cached_lat, .99) <= 20,
        "uncached_le_2x_bare": uncached_vs_bare <= 2,
        "decisions_agree_with_bare": disagreements == 0,
    }
    print()
    print(f"{'metric':<44}{'value':>16}")
    for name, value in [
        ("iotguard decisions/s on mix", f"{mix_rate:,.0f}"),
        ("iotguard decide_batch(100) decisions/s", f"{batch_rate:,.0f}"),
        ("bare cedarpy decisions/s", f"{bare_rate:,.0f}"),
        ("ratio (headline)", f"{ratio:,.1f}x"),
        ("cached p50 / p99 us", f"{pct(cached_lat, .5):.2f} / {pct(cached_lat, .99):.2f}"),
        ("uncached p50 / p99 us", f"{pct(unc_lat, .5):.1f} / {pct(unc_lat, .99):.1f}"),
        ("bare p50 / p99 us", f"{pct(bare_lat, .5):.0f} / {pct(bare_lat, .99):.0f}"),
        ("uncached mean / bare mean", f"{uncached_vs_bare:.3f}"),
    ]:
        print(f"{name:<44}{value:>16}")
    print("goals:", ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in goals.items()))

    result = {
        "benchmark": "policy",
        "quick": args.quick,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cedarpy": getattr(cedarpy, "__version__", "4.x"),
        "workload": {
            "devices": DEVICES,
            "segments": len(SEGMENTS),
            "requests": n_mix,
            "posture_change_every": change_every,
            "bare_sample": len(sample),
        },
        "iotguard_mix_decisions_per_s": round(mix_rate),
        "iotguard_batch100_decisions_per_s": round(batch_rate),
        "bare_cedarpy_decisions_per_s": round(bare_rate),
        "bare_preparsed_policyset_decisions_per_s": round(1e6 / statistics.fmean(pre_lat)),
        "cached_us": {"p50": round(pct(cached_lat, .5), 3), "p99": round(pct(cached_lat, .99), 3)},
        "uncached_us": {"p50": round(pct(unc_lat, .5), 2), "p99": round(pct(unc_lat, .99), 2),
                        "mean": round(statistics.fmean(unc_lat), 2)},
        "bare_us": {"p50": round(pct(bare_lat, .5), 1), "p99": round(pct(bare_lat, .99), 1),
                    "mean": round(statistics.fmean(bare_lat), 1)},
        "uncached_over_bare": round(uncached_vs_bare, 4),
        "disagreements": disagreements,
        "goals": goals,
        "headline": {
            "name": "iotguard policy decisions/s on a 10k-device ingest mix",
            "unit": "decisions/s",
            "value": round(mix_rate),
            "baseline_name": "bare cedarpy.is_authorized (entities and context serialised per call)",
            "baseline_value": round(bare_rate),
            "ratio": round(ratio, 2),
            "goal": ">= 10x; cached p99 <= 20 us; uncached <= 2x bare",
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
