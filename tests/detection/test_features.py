"""Damped per-host and per-channel features: exact against a plain loop, batch-invariant, bounded."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from iotguard.detection import FeatureConfig, FeatureExtractor, Flow, FlowBatch, feature_names


def _random_flows(n: int, hosts: int, seed: int = 0) -> list[Flow]:
    rng = random.Random(seed)
    t = 1_700_000_000.0
    out = []
    for _ in range(n):
        t += rng.expovariate(5.0)
        state = rng.choice(["SF", "S0", "REJ", "OTH"])
        out.append(Flow(t, f"10.0.0.{rng.randrange(hosts)}", rng.randint(1024, 65535),
                        f"10.1.0.{rng.randrange(12)}", rng.choice([23, 80, 443, 8883]), rng.choice(["tcp", "udp"]),
                        rng.random(), rng.randint(0, 5000), rng.randint(0, 500) if state == "SF" else 0, state,
                        rng.randint(1, 9), rng.randint(1, 9) if state == "SF" else 0))
    return out


def _naive(flows: list[Flow], cfg: FeatureConfig) -> dict[str, list[float]]:
    """Reference: a plain per-flow loop over the same definitions."""
    out: dict[str, list[float]] = {"rate": [], "bytes_mean": [], "new_dst": [], "channel_rate": [], "iat_mean": []}
    h = cfg.half_lives_s[1]
    hosts: dict[str, tuple[float, float, float, float]] = {}
    seen_dst: set[tuple[str, str]] = set()
    chans: dict[tuple[str, str], tuple[float, float, float, float]] = {}
    for f in flows:
        w, lb, nd, t0 = hosts.get(f.orig_h, (0.0, 0.0, 0.0, f.ts))
        d = 2 ** (-(f.ts - t0) / h)
        new = (f.orig_h, f.resp_h) not in seen_dst
        seen_dst.add((f.orig_h, f.resp_h))
        w, lb, nd = w * d + 1, lb * d + math.log1p(f.orig_bytes), nd * d + new
        hosts[f.orig_h] = (w, lb, nd, f.ts)
        out["rate"].append(math.log1p(w))
        out["bytes_mean"].append(lb / w)
        out["new_dst"].append(math.log1p(nd))
        key = (f.orig_h, f.resp_h)
        cw, n_iat, s_iat, last = chans.get(key, (0.0, 0.0, 0.0, math.nan))
        dc = 2 ** (-(f.ts - last) / cfg.channel_half_life_s) if not math.isnan(last) else 1.0
        has = not math.isnan(last)
        cw, n_iat, s_iat = cw * dc + 1, n_iat * dc + has, s_iat * dc + (f.ts - last if has else 0.0)
        chans[key] = (cw, n_iat, s_iat, f.ts)
        out["channel_rate"].append(math.log1p(cw))
        out["iat_mean"].append(math.log1p(s_iat / n_iat) if n_iat > 0 else 0.0)
    return out


def test_matches_plain_loop_definition() -> None:
    cfg = FeatureConfig()
    flows = _random_flows(600, hosts=7)
    fx = FeatureExtractor(cfg)
    batch = FlowBatch.from_flows(flows)
    values = np.concatenate([fx.transform(batch.take(slice(i, i + 128))).values for i in range(0, 600, 128)])
    names = feature_names(cfg)
    h = f"{cfg.half_lives_s[1]:g}s"
    ref = _naive(flows, cfg)
    np.testing.assert_allclose(values[:, names.index(f"rate@{h}")], ref["rate"], rtol=1e-9)
    np.testing.assert_allclose(values[:, names.index(f"bytes_mean@{h}")], ref["bytes_mean"], rtol=1e-9)
    np.testing.assert_allclose(values[:, names.index(f"new_dst@{h}")], ref["new_dst"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(values[:, names.index("channel_rate")], ref["channel_rate"], rtol=1e-9)
    np.testing.assert_allclose(values[:, names.index("channel_iat_mean")], ref["iat_mean"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("size", [1, 17, 1000])
def test_batching_does_not_change_features(size: int) -> None:
    flows = FlowBatch.from_flows(_random_flows(1000, hosts=30, seed=3))
    whole = FeatureExtractor().transform(flows).values
    fx = FeatureExtractor()
    parts = np.concatenate([fx.transform(flows.take(slice(i, i + size))).values for i in range(0, 1000, size)])
    # Spreads (sum of squares minus squared mean) carry ~1e-6 relative rounding noise.
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-7)


def test_long_gaps_do_not_overflow() -> None:
    """Damped sums over a day-long batch stay finite (the log-domain scan)."""
    flows = [Flow(1e9 + i * 3600.0, "10.0.0.1", 1000, "10.0.0.2", 80, "tcp", 0.1, 100, 100, "SF", 2, 2)
             for i in range(48)]
    values = FeatureExtractor().transform(FlowBatch.from_flows(flows)).values
    assert np.isfinite(values).all()


def test_scan_raises_new_destination_counts() -> None:
    scan = [Flow(1e9 + i * 0.01, "10.0.0.1", 40000, f"1.2.{i // 250}.{i % 250}", 23, "tcp", 0.0, 0, 0, "S0", 1, 0)
            for i in range(300)]
    fm = FeatureExtractor().transform(FlowBatch.from_flows(scan))
    names = feature_names()
    assert fm.new_dst.sum() == 300
    assert math.expm1(fm.values[-1, names.index("new_dst@10s")]) > 250


def test_state_is_bounded_per_host_and_in_hosts() -> None:
    """A scanner cannot grow the extractor's memory without bound."""
    cfg = FeatureConfig(max_hosts=64, max_pairs_per_host=16)
    fx = FeatureExtractor(cfg)
    t = 1e9
    for round_ in range(40):
        flows = [Flow(t + i * 0.001, f"10.9.{round_}.{i % 8}", 40000, f"1.{round_}.{i // 200}.{i % 200}", 23,
                      "tcp", 0.0, 0, 0, "S0", 1, 0) for i in range(40)]
        t += 1.0
        fx.transform(FlowBatch.from_flows(flows))
    assert fx.hosts <= 64
    assert fx.channel_entries <= 2 * 64 * 16 + 4096 * 2
