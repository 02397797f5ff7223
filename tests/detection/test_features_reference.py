"""Every feature column against a straightforward per-flow loop over its definition (docs/detection.md).

The reference keeps plain Python dictionaries per host, channel and port and
updates them one flow at a time; the extractor works on whole batches, on
both of its paths: the NumPy form (grouping, blocked scans) and the
Numba-compiled kernel (one pass in time order). A wrong statistic, decay,
novelty rule or column order fails here.
"""

from __future__ import annotations

import importlib.util
import math
import random

import numpy as np
import pytest

from iotguard.detection import FeatureConfig, FeatureExtractor, Flow, FlowBatch, feature_names
from iotguard.detection.flows import ESTABLISHED_STATES, REJECTED_STATES

_NO_REPLY = {"S0", "SH", "OTH", "RSTOS0"}
HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def _stream(n: int, seed: int) -> list[Flow]:
    """Random flows among devices that also answer each other, with bursts and long gaps."""
    rng = random.Random(seed)
    t = 1_700_000_000.0
    hosts = [f"10.0.0.{i}" for i in range(9)] + [f"fd00::{i:x}" for i in range(3)]
    out = []
    for _ in range(n):
        t += rng.choice([rng.expovariate(20.0), rng.expovariate(0.2), rng.expovariate(0.002)])
        state = rng.choice(["SF", "S0", "REJ", "OTH", "S1", "RSTO", "SH"])
        answered = state in ("SF", "S1")
        out.append(Flow(t, rng.choice(hosts), rng.randint(1024, 65535), rng.choice([*hosts[:6], "8.8.8.8"]),
                        rng.choice([23, 53, 80, 443, 8883, 40000]), rng.choice(["tcp", "udp", "icmp"]),
                        rng.random() * 3, rng.randint(0, 50_000), rng.randint(0, 900) if answered else 0, state,
                        rng.randint(1, 40), rng.randint(1, 9) if answered else 0,
                        rng.choice(["", "dns", "http"])))
    return out


def _reference(flows: list[Flow], cfg: FeatureConfig) -> np.ndarray:
    rates = [math.log(2.0) / h for h in cfg.half_lives_s]
    c_rate = math.log(2.0) / cfg.channel_half_life_s
    host: dict[str, tuple[float, list[list[float]]]] = {}
    inbound: dict[str, tuple[float, list[list[float]]]] = {}
    chan: dict[tuple[str, str], tuple[float, list[float]]] = {}
    ports: set[tuple[str, str, int]] = set()
    first_seen: dict[str, float] = {}
    rows = []

    def damp(table: dict[str, tuple[float, list[list[float]]]], key: str, t: float,
             x: list[float]) -> list[list[float]]:
        last, sums = table.get(key, (t, [[0.0] * len(x) for _ in rates]))
        sums = [[s * math.exp(-r * max(t - last, 0.0)) + xi for s, xi in zip(per, x, strict=True)]
                for r, per in zip(rates, sums, strict=True)]
        table[key] = (t, sums)
        return sums

    for f in flows:
        first_seen.setdefault(f.orig_h, f.ts)
        first_seen.setdefault(f.resp_h, f.ts)
        lob, lrb = math.log1p(f.orig_bytes), math.log1p(f.resp_bytes)
        no_reply = float(f.conn_state in _NO_REPLY and f.resp_pkts == 0)
        row = [math.log1p(f.duration), lob, lrb, math.log1p(f.orig_pkts), math.log1p(f.resp_pkts), lob - lrb,
               no_reply, float(f.conn_state in REJECTED_STATES), float(f.conn_state in ESTABLISHED_STATES),
               float(f.proto == "tcp"), float(f.proto == "udp"), float(f.proto == "icmp"), float(bool(f.service)),
               float(f.resp_p < 1024)]
        new_dst = float((f.orig_h, f.resp_h) not in chan)
        new_port = float((f.orig_h, f.proto, f.resp_p) not in ports)
        ports.add((f.orig_h, f.proto, f.resp_p))
        for w, s_lb, s_lb2, s_b, s_nd, s_np, s_nr in damp(
                host, f.orig_h, f.ts, [1.0, lob, lob * lob, float(f.orig_bytes), new_dst, new_port, no_reply]):
            mean, second = s_lb / w, s_lb2 / w
            var = second - mean * mean
            row += [math.log1p(w), mean, math.sqrt(var) if var > 1e-9 * second else 0.0, math.log1p(s_b),
                    s_nd / w, math.log1p(s_nd), math.log1p(s_np), s_nr / w]
        row.append(math.log1p(min(max(f.ts - first_seen[f.orig_h], 0.0), cfg.max_age_s)))
        key = (f.orig_h, f.resp_h)
        if key in chan:
            last, (c, n_iat, s_iat, s_iat2) = chan[key]
            d = math.exp(-c_rate * max(f.ts - last, 0.0))
            iat = max(f.ts - last, 0.0)
            c, n_iat, s_iat, s_iat2 = c * d + 1, n_iat * d + 1, s_iat * d + iat, s_iat2 * d + iat * iat
        else:
            c, n_iat, s_iat, s_iat2 = 1.0, 0.0, 0.0, 0.0
        chan[key] = (f.ts, [c, n_iat, s_iat, s_iat2])
        mean = s_iat / n_iat if n_iat > 0 else 0.0
        var = s_iat2 / n_iat - mean * mean if n_iat > 0 else 0.0
        cv = math.sqrt(max(var, 0.0)) / mean if n_iat >= 1.5 and mean > 0 else 1.0
        row += [math.log1p(c), math.log1p(mean), min(cv, 5.0)]
        for w, s_new, s_nr in damp(inbound, f.resp_h, f.ts, [1.0, new_dst, no_reply]):
            row += [math.log1p(w), s_new / w, s_nr / w]
        rows.append(row)
    return np.array(rows)


# Both paths: the NumPy reference form and the Numba-compiled kernel (skipped where Numba is absent).
_PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed"))]


@pytest.mark.parametrize("compiled", _PATHS)
@pytest.mark.parametrize(("batch", "seed"), [(1, 1), (7, 2), (64, 3), (1000, 4), (3000, 5)])
def test_every_feature_equals_the_per_flow_definition(batch: int, seed: int, compiled: bool) -> None:
    cfg = FeatureConfig()
    flows = _stream(3000, seed)
    whole = FlowBatch.from_flows(flows)
    fx = FeatureExtractor(cfg, compiled=compiled)
    assert fx.compiled is compiled
    got = np.concatenate([fx.transform(whole.take(slice(i, i + batch))).values for i in range(0, len(flows), batch)])
    want = _reference(flows, cfg)
    assert got.shape == want.shape == (len(flows), len(feature_names(cfg)))
    names = feature_names(cfg)
    for j, name in enumerate(names):
        # A spread is a difference of two sums: its rounding noise is relative to the sums, not to it.
        atol = 1e-5 if "std" in name or "cv" in name else 1e-9
        np.testing.assert_allclose(got[:, j], want[:, j], rtol=1e-7, atol=atol, err_msg=name)


@pytest.mark.parametrize("compiled", _PATHS)
def test_reference_would_catch_a_wrong_statistic(compiled: bool) -> None:
    """The comparison above is sharp: a slightly different half-life is caught in the columns it touches."""
    flows = _stream(500, 9)
    got = FeatureExtractor(FeatureConfig(half_lives_s=(10.0, 61.0, 600.0)), compiled=compiled).transform(
        FlowBatch.from_flows(flows)).values
    want = _reference(flows, FeatureConfig())
    names = feature_names()
    wrong = {names[j] for j in range(len(names)) if not np.allclose(got[:, j], want[:, j], rtol=1e-7, atol=1e-9)}
    assert "rate@60s" in wrong and "rate@10s" not in wrong and "channel_rate" not in wrong
