"""Policy decision point benchmark: iotguard engine vs cedarpy with a pre-parsed policy set.

Workload: a simulated fleet of 10,000 devices (quick: 2,000) in 8 segments and 3 models, in
simulated time (the engine is given each request's instant). Every device
publishes one telemetry reading a minute; once an hour each device
attests (evidence publish, then a posture update that invalidates its
cached decisions); detection changes the risk score of 0.5% of the fleet a
minute; one device a minute is quarantined and one released; 0.2% of the
fleet reconnects a minute (command subscription); ten compromised devices
each probe ten other devices' telemetry topics a minute (lateral attempts,
every one a new request). The timed window of 30 simulated minutes starts
at 10:45 UTC so it crosses an hour boundary, where every cached decision expires; it
follows one warm-up minute (the hub was already running), which is timed
separately as the cold-start row.

Measured in the same run, interleaved chunk by chunk so load from other
processes hits both sides alike:

* ``iotguard decide`` over every request of the window (cache hits, class
  hits and Cedar evaluations as they come; posture updates included);
* the baseline on every 10th request: ``cedarpy.is_authorized`` with a
  ``cedarpy.PolicySet`` parsed once, entities and context built from the
  posture for each request -- what a careful caller without iotguard
  writes; its decision must agree with iotguard's for the same request;
* for reference: the same with the policy text re-parsed per call (the
  earlier baseline), ``decide_batch`` in ingest batches of 100 against
  ``cedarpy.is_authorized_batch`` on the same batches (pre-parsed policy
  set, the batch's entities parsed once per batch), and latencies.

Rates are decisions per second of process CPU time (the cores are shared
with other jobs; CPU time does not count the time this process waits);
latencies are wall-clock.

Headline: iotguard decisions/s / pre-parsed cedarpy decisions/s (goal >= 10).
Other goals: cached p99 <= 20 us; uncached mean <= 2x the baseline.

Usage: python bench/policy.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cedarpy

from iotguard.policy import AccessRequest, PolicyEngine, Posture, PostureStore, default_policy_set

SEGMENTS = [f"seg-{i}" for i in range(8)]
MODELS = ["thermo-1", "thermo-2", "cam-1"]
COMPROMISED = 10
PROBES_PER_MINUTE = 10
BASELINE_EVERY = 10
CHUNK = 2_000
RESULTS = Path(__file__).parent / "results" / "policy.json"


@dataclass(frozen=True, slots=True)
class Change:
    """A posture change from the verifier, detection or an operator."""

    device_id: str
    fields: dict[str, Any]


Event = tuple[datetime, AccessRequest | Change]


def initial_fleet(devices: int, start: datetime, rng: random.Random) -> list[Posture]:
    fleet = []
    for i in range(devices):
        r = rng.random()
        tier = "verified" if r < 0.95 else ("degraded" if r < 0.99 else "unverified")
        risk = rng.randint(0, 30) if rng.random() < 0.9 else rng.randint(30, 80)
        fleet.append(
            Posture(
                device_id=f"dev-{i:05d}",
                segment=SEGMENTS[i % len(SEGMENTS)],
                model=MODELS[i % len(MODELS)],
                trust_tier=tier,
                risk_score=risk,
                cert_not_after=start + timedelta(seconds=rng.randint(86400, 90 * 86400)),
                attested_at=start - timedelta(seconds=rng.randint(0, 3599)),
            )
        )
    return fleet


def events(fleet: list[Posture], start: datetime, minutes: int, rng: random.Random) -> list[Event]:
    """Every request and posture change from minute -1 (warm-up) to ``minutes``, in time order."""
    ids = [p.device_id for p in fleet]
    segment = {p.device_id: p.segment for p in fleet}
    phase = {d: rng.uniform(0, 60) for d in ids}
    attest_at = {p.device_id: (p.attested_at.timestamp() - start.timestamp()) % 3600 for p in fleet if p.attested_at}
    compromised = rng.sample(ids, COMPROMISED)
    quarantined: list[str] = []
    out: list[tuple[float, int, AccessRequest | Change]] = []
    seq = 0

    def add(offset: float, item: AccessRequest | Change) -> None:
        nonlocal seq
        out.append((offset, seq, item))
        seq += 1

    for m in range(-1, minutes):
        base = 60.0 * m
        for d in ids:
            t = base + phase[d]
            a = attest_at[d]
            if m >= 0 and base <= a < base + 60:
                # Hourly attestation: evidence published, then the appraisal changes posture.
                at = base + (a - base)
                add(at, AccessRequest.device(d, "publish", f"iotguard/attest/{d}/evidence"))
                r = rng.random()
                tier = "verified" if r < 0.97 else ("degraded" if r < 0.998 else "failed")
                add(at + 0.5, Change(d, {"trust_tier": tier, "attested_at": start + timedelta(seconds=at + 0.5)}))
            add(t, AccessRequest.device(d, "publish", f"iotguard/{segment[d]}/{d}/telemetry"))
        if m < 0:
            continue
        for d in rng.sample(ids, len(ids) // 200):
            r = rng.random()
            risk = rng.randint(0, 30) if r < 0.8 else (rng.randint(30, 69) if r < 0.95 else rng.randint(70, 100))
            add(base + rng.uniform(0, 60), Change(d, {"risk_score": risk}))
        victim = rng.choice(ids)
        quarantined.append(victim)
        add(base + rng.uniform(0, 60), Change(victim, {"quarantined": True}))
        if len(quarantined) > 3:
            add(base + rng.uniform(0, 60), Change(quarantined.pop(0), {"quarantined": False}))
        for d in rng.sample(ids, len(ids) // 500):
            add(base + rng.uniform(0, 60), AccessRequest.device(d, "subscribe", f"iotguard/{segment[d]}/{d}/cmd"))
        for d in compromised:
            for _ in range(PROBES_PER_MINUTE):
                v = rng.choice(ids)
                add(base + rng.uniform(0, 60), AccessRequest.device(d, "publish", f"iotguard/{segment[v]}/{v}/telemetry"))
    out.sort(key=lambda e: (e[0], e[1]))
    return [(start + timedelta(seconds=t), item) for t, _, item in out]


# ------------------------------------------------------------ the baseline


class Baseline:
    """What a caller without iotguard writes: Cedar with the policy set parsed once.

    Keeps its own posture table (a dict), builds the entities and context
    of each request from it, and calls ``cedarpy.is_authorized``.
    """

    def __init__(self, fleet: list[Posture], policies: cedarpy.PolicySet | str) -> None:
        self.posture = {p.device_id: p for p in fleet}
        self.policies = policies

    def apply(self, change: Change) -> None:
        self.posture[change.device_id] = replace(self.posture[change.device_id], **change.fields)

    def inputs(self, req: AccessRequest, now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        p = self.posture[req.principal_id]
        seg = "quarantine" if p.quarantined else p.segment
        parts = req.resource_id.split("/")
        topic_attrs: dict[str, Any] = {"kind": "unknown", "direction": "none"}
        if parts[1] == "attest":
            topic_attrs = {
                "kind": "attestation",
                "direction": "up" if parts[3] == "evidence" else "down",
                "device": {"__entity": {"type": "Device", "id": parts[2]}},
            }
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
        age = (now - p.attested_at).total_seconds() if p.attested_at else -1
        request = {
            "principal": {"type": "Device", "id": p.device_id},
            "action": {"type": "Action", "id": req.action},
            "resource": {"type": "Topic", "id": req.resource_id},
            "context": {
                "trust_tier": p.trust_tier,
                "risk_score": p.risk_score,
                "cert_valid": remaining > 0,
                "cert_days_left": -int(-remaining // 86400) if remaining > 0 else 0,
                "fresh_attestation": p.trust_tier == "verified" and 0 <= age < 300,
                "hour_utc": now.hour,
                "declared_location": p.declared_location,
            },
        }
        return request, entities

    def decide(self, req: AccessRequest, now: datetime) -> bool:
        request, entities = self.inputs(req, now)
        return cedarpy.is_authorized(request, self.policies, entities).allowed

    def decide_batch(self, batch: list[AccessRequest], now: datetime) -> list[bool]:
        requests = []
        entities: dict[tuple[str, str], dict[str, Any]] = {}
        for req in batch:
            request, ents = self.inputs(req, now)
            requests.append(request)
            for e in ents:
                entities[(e["uid"]["type"], e["uid"]["id"])] = e
        results = cedarpy.is_authorized_batch(requests, self.policies, list(entities.values()))
        return [r.allowed for r in results]


# ------------------------------------------------------------ the runs


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def chunks(items: list[Event], size: int) -> Iterator[list[Event]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def apply_change(store: PostureStore, change: Change) -> None:
    store.update(change.device_id, **change.fields)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller run (about a minute)")
    args = ap.parse_args()
    devices = 2_000 if args.quick else 10_000
    minutes = 30
    start = datetime(2026, 3, 2, 10, 45, tzinfo=UTC)

    rng = random.Random(7)
    fleet = initial_fleet(devices, start, rng)
    timeline = events(fleet, start, minutes, rng)
    warm = [e for e in timeline if e[0] < start]
    window = [e for e in timeline if e[0] >= start]
    n_requests = sum(isinstance(item, AccessRequest) for _, item in window)
    print(
        f"fleet {devices} devices / {len(SEGMENTS)} segments / {len(MODELS)} models; "
        f"{minutes} simulated minutes from {start:%H:%M} UTC: {n_requests} requests, "
        f"{len(window) - n_requests} posture changes"
    )

    text = default_policy_set().text
    parsed = cedarpy.PolicySet.from_str(text)
    store = PostureStore(fleet)
    engine = PolicyEngine(default_policy_set(), posture=store)
    baseline = Baseline(fleet, parsed)

    def run_engine(part: list[Event], record: dict[int, bool] | None = None, base: int = 0) -> int:
        count = 0
        for k, (t, item) in enumerate(part):
            if isinstance(item, Change):
                apply_change(store, item)
            else:
                decision = engine.decide(item, now=t)
                count += 1
                if record is not None and (base + k) % BASELINE_EVERY == 0:
                    record[base + k] = decision.allowed
        return count

    def run_baseline(part: list[Event], base: int, record: dict[int, bool]) -> tuple[int, float, int]:
        count, seconds, disagree = 0, 0.0, 0
        for k, (t, item) in enumerate(part):
            if isinstance(item, Change):
                baseline.apply(item)
            elif (base + k) % BASELINE_EVERY == 0:
                t0 = time.process_time()
                allowed = baseline.decide(item, t)
                seconds += time.process_time() - t0
                count += 1
                disagree += allowed != record[base + k]
        return count, seconds, disagree

    # --- cold start: the warm-up minute, every device's first request
    cold_seconds = timed(lambda: run_engine(warm))
    cold_requests = sum(isinstance(item, AccessRequest) for _, item in warm)
    for _, item in warm:
        if isinstance(item, Change):
            baseline.apply(item)
    stats0 = engine.cache_stats()

    # --- the window: iotguard and the baseline interleaved chunk by chunk
    eng_seconds = base_seconds = 0.0
    base_count = disagreements = 0
    allowed_total = 0
    position = 0
    for part in chunks(window, CHUNK):
        record: dict[int, bool] = {}
        eng_seconds += timed(lambda part=part, record=record, at=position: run_engine(part, record, at))
        c, s, d = run_baseline(part, position, record)
        base_count += c
        base_seconds += s
        disagreements += d
        allowed_total += sum(record.values())
        position += len(part)
    stats = engine.cache_stats()
    evaluations = stats["evaluations"] - stats0["evaluations"]
    class_hits = stats["class_hits"] - stats0["class_hits"]
    mix_rate = n_requests / eng_seconds
    base_rate = base_count / base_seconds
    ratio = mix_rate / base_rate
    print(f"cold start (warm-up minute): {cold_requests / cold_seconds:,.0f} decisions/s")
    print(
        f"iotguard decide: {mix_rate:,.0f} decisions/s; Cedar evaluations {evaluations / n_requests:.2%}, "
        f"class hits {class_hits / n_requests:.2%}, request-cache hits {1 - (evaluations + class_hits) / n_requests:.2%}"
    )
    print(
        f"baseline (pre-parsed PolicySet): {base_rate:,.0f} decisions/s on {base_count} requests; "
        f"disagreements {disagreements}; ratio {ratio:.1f}x"
    )

    # --- reference: the policy text re-parsed on every call, on a sample
    sample = [(t, item) for t, item in window if isinstance(item, AccessRequest)][:: BASELINE_EVERY * 10]
    text_baseline = Baseline(fleet, text)
    text_baseline.posture = dict(baseline.posture)
    text_lat: list[float] = []
    for t, req in sample:
        t0 = time.perf_counter_ns()
        text_baseline.decide(req, t)
        text_lat.append((time.perf_counter_ns() - t0) / 1000)
    text_rate = 1e6 / statistics.fmean(text_lat)

    # --- latencies on the same sample: baseline, uncached iotguard, cached iotguard
    bare_lat: list[float] = []
    unc_lat: list[float] = []
    for t, req in sample:
        t0 = time.perf_counter_ns()
        baseline.decide(req, t)
        bare_lat.append((time.perf_counter_ns() - t0) / 1000)
        t0 = time.perf_counter_ns()
        engine.decide_uncached(req, now=t)
        unc_lat.append((time.perf_counter_ns() - t0) / 1000)
    end = window[-1][0]
    hot = [req for _, req in sample]
    for req in hot:
        engine.decide(req, now=end)
    cached_lat: list[float] = []
    pc = time.perf_counter_ns
    for req in hot:
        t0 = pc()
        engine.decide(req, now=end)
        cached_lat.append((pc() - t0) / 1000)

    # --- ingest batches of 100: decide_batch vs cedarpy.is_authorized_batch, fresh state, interleaved
    store_b = PostureStore(fleet)
    engine_b = PolicyEngine(default_policy_set(), posture=store_b)
    batch_base = Baseline(fleet, parsed)
    for t, item in warm:
        if isinstance(item, Change):
            apply_change(store_b, item)
            batch_base.apply(item)
        else:
            engine_b.decide(item, now=t)
    batches: list[tuple[datetime, list[AccessRequest]] | Change] = []
    pending: list[AccessRequest] = []
    first = start
    for t, item in window:
        if pending and (isinstance(item, Change) or len(pending) == 100):
            batches.append((first, pending))
            pending = []
        if isinstance(item, Change):
            batches.append(item)
        else:
            if not pending:
                first = t
            pending.append(item)
    if pending:
        batches.append((first, pending))
    eng_b = base_b = 0.0
    base_b_count = 0
    n_batches = 0
    for item_b in batches:
        if isinstance(item_b, Change):
            apply_change(store_b, item_b)
            batch_base.apply(item_b)
            continue
        t, reqs = item_b
        t0 = time.process_time()
        engine_b.decide_batch(reqs, now=t)
        eng_b += time.process_time() - t0
        if n_batches % BASELINE_EVERY == 0:
            t0 = time.process_time()
            batch_base.decide_batch(reqs, t)
            base_b += time.process_time() - t0
            base_b_count += len(reqs)
        n_batches += 1
    batch_rate = n_requests / eng_b
    base_batch_rate = base_b_count / base_b

    uncached_vs_bare = statistics.fmean(unc_lat) / statistics.fmean(bare_lat)
    goals = {
        "ratio_ge_10": ratio >= 10,
        "cached_p99_le_20us": pct(cached_lat, 0.99) <= 20,
        "uncached_le_2x_bare": uncached_vs_bare <= 2,
        "decisions_agree_with_baseline": disagreements == 0,
    }
    print()
    print(f"{'metric':<52}{'value':>18}")
    for name, value in [
        ("iotguard decide, decisions/s", f"{mix_rate:,.0f}"),
        ("baseline: cedarpy, pre-parsed PolicySet, decisions/s", f"{base_rate:,.0f}"),
        ("ratio (headline)", f"{ratio:,.1f}x"),
        ("cold-start minute, iotguard decisions/s", f"{cold_requests / cold_seconds:,.0f}"),
        ("cold start / baseline", f"{cold_requests / cold_seconds / base_rate:,.1f}x"),
        ("reference: cedarpy re-parsing text, decisions/s", f"{text_rate:,.0f}"),
        ("iotguard decide_batch(100), decisions/s", f"{batch_rate:,.0f}"),
        ("cedarpy is_authorized_batch(100), decisions/s", f"{base_batch_rate:,.0f}"),
        ("batch ratio", f"{batch_rate / base_batch_rate:,.1f}x"),
        ("Cedar evaluations / class hits (share of requests)", f"{evaluations / n_requests:.2%} / {class_hits / n_requests:.2%}"),
        ("cached p50 / p99 us", f"{pct(cached_lat, 0.5):.2f} / {pct(cached_lat, 0.99):.2f}"),
        ("uncached p50 / p99 us", f"{pct(unc_lat, 0.5):.1f} / {pct(unc_lat, 0.99):.1f}"),
        ("baseline p50 / p99 us", f"{pct(bare_lat, 0.5):.1f} / {pct(bare_lat, 0.99):.1f}"),
        ("uncached mean / baseline mean", f"{uncached_vs_bare:.3f}"),
    ]:
        print(f"{name:<52}{value:>18}")
    print("goals:", ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in goals.items()))

    result = {
        "benchmark": "policy",
        "quick": args.quick,
        "platform": platform.platform(),
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "clock": "rates: process CPU time; latencies: wall clock",
        "cedarpy": importlib.metadata.version("cedarpy"),
        "workload": {
            "devices": devices,
            "segments": len(SEGMENTS),
            "models": len(MODELS),
            "simulated_minutes": minutes,
            "window_start_utc": start.isoformat(),
            "requests": n_requests,
            "posture_changes": len(window) - n_requests,
            "baseline_every": BASELINE_EVERY,
            "baseline_requests": base_count,
            "allowed_share_of_recorded": round(allowed_total / max(1, base_count), 4),
        },
        "cache": {
            "cedar_evaluations_share": round(evaluations / n_requests, 4),
            "class_hits_share": round(class_hits / n_requests, 4),
            "request_cache_hits_share": round(1 - (evaluations + class_hits) / n_requests, 4),
        },
        "iotguard_decisions_per_s": round(mix_rate),
        "baseline_preparsed_decisions_per_s": round(base_rate),
        "cold_start_decisions_per_s": round(cold_requests / cold_seconds),
        "reference_text_reparsed_decisions_per_s": round(text_rate),
        "iotguard_batch100_decisions_per_s": round(batch_rate),
        "baseline_batch100_decisions_per_s": round(base_batch_rate),
        "batch_ratio": round(batch_rate / base_batch_rate, 2),
        "cached_us": {"p50": round(pct(cached_lat, 0.5), 3), "p99": round(pct(cached_lat, 0.99), 3)},
        "uncached_us": {
            "p50": round(pct(unc_lat, 0.5), 2),
            "p99": round(pct(unc_lat, 0.99), 2),
            "mean": round(statistics.fmean(unc_lat), 2),
        },
        "baseline_us": {
            "p50": round(pct(bare_lat, 0.5), 1),
            "p99": round(pct(bare_lat, 0.99), 1),
            "mean": round(statistics.fmean(bare_lat), 1),
        },
        "uncached_over_baseline": round(uncached_vs_bare, 4),
        "disagreements": disagreements,
        "goals": goals,
        "headline": {
            "name": f"iotguard policy decisions/s, {devices}-device fleet in simulated time",
            "unit": "decisions/s",
            "value": round(mix_rate),
            "baseline_name": "cedarpy.is_authorized with a pre-parsed PolicySet (entities and context built per request)",
            "baseline_value": round(base_rate),
            "ratio": round(ratio, 2),
            "goal": ">= 10x; cached p99 <= 20 us; uncached <= 2x baseline",
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
