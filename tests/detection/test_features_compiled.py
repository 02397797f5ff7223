"""The Numba-compiled feature kernel agrees with the NumPy reference path on random streams.

Same columns, same novelty flags and the same state afterwards (hosts,
channel and port entries), including host eviction, per-host trimming, a
batch out of time order and state handed from one path to the other.
"""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest

from iotguard.config import HubConfig
from iotguard.detection import FeatureConfig, FeatureExtractor, Flow, FlowBatch
from iotguard.detection import features as features_module
from iotguard.errors import ConfigError
from iotguard.hub.compose import _monitor_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba not installed")


def _stream(n: int, seed: int, hosts: int) -> list[Flow]:
    rng = random.Random(seed)
    t = 1_700_000_000.0
    names = [f"10.{i // 250}.0.{i % 250}" for i in range(hosts)] + ["fd00::1", "8.8.8.8"]
    out = []
    for k in range(n):
        # Hosts come and go: a window of 15 moves through the list, so old hosts can be evicted.
        near = names[(k // 200) % hosts:][:15] + names[-2:]
        t += rng.choice([0.0, rng.expovariate(50.0), rng.expovariate(0.05)])
        state = rng.choice(["SF", "S0", "REJ", "OTH", "S1", "SH"])
        answered = state in ("SF", "S1")
        out.append(Flow(t, rng.choice(near), rng.randint(1024, 65535), rng.choice(near),
                        rng.randint(1, 4000), rng.choice(["tcp", "udp", "icmp"]), rng.random() * 5,
                        rng.randint(0, 10**6), rng.randint(0, 9000) if answered else 0, state,
                        rng.randint(1, 90), rng.randint(1, 9) if answered else 0, rng.choice(["", "dns"])))
    return out


def _run(fx: FeatureExtractor, whole: FlowBatch, sizes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values, new_dst, new_port = [], [], []
    i = 0
    for size in sizes:
        fm = fx.transform(whole.take(slice(i, i + size)))
        values.append(fm.values)
        new_dst.append(fm.new_dst)
        new_port.append(fm.new_port)
        i += size
    return np.concatenate(values), np.concatenate(new_dst), np.concatenate(new_port)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_compiled_kernel_agrees_with_numpy_path_on_a_random_stream(seed: int) -> None:
    # Few hosts and pairs allowed, so eviction and trimming happen on both paths.
    cfg = FeatureConfig(max_hosts=40, max_pairs_per_host=8)
    flows = _stream(6000, seed, hosts=60)
    whole = FlowBatch.from_flows(flows)
    rng = random.Random(seed)
    sizes = []
    while sum(sizes) < len(flows):
        sizes.append(min(rng.choice([1, 5, 64, 500, 2000]), len(flows) - sum(sizes)))
    fast, ref = FeatureExtractor(cfg, compiled=True), FeatureExtractor(cfg, compiled=False)
    assert fast.compiled and not ref.compiled
    got, want = _run(fast, whole, sizes), _run(ref, whole, sizes)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-7, atol=1e-5)
    assert (fast.hosts, fast.channel_entries) == (ref.hosts, ref.channel_entries)
    # The kernel's hashed channel and port tables hold the same entries as the NumPy path's sorted ones.
    for mine, theirs in ((fast._channels, ref._channels), (fast._ports, ref._ports)):
        keys, values = mine.items()
        want_keys, want_values = theirs.items()
        np.testing.assert_array_equal(keys, want_keys)
        np.testing.assert_allclose(values, want_values, rtol=1e-12, equal_nan=True)


def test_out_of_order_batch_and_state_handover_agree() -> None:
    """A batch not in time order takes the NumPy path; state written by either path is read by the other."""
    flows = _stream(1500, 21, hosts=12)
    shuffled = flows[:500] + random.Random(3).sample(flows[500:1000], 500) + flows[1000:]
    whole = FlowBatch.from_flows(shuffled)
    fast, ref = FeatureExtractor(compiled=True), FeatureExtractor(compiled=False)
    a = _run(fast, whole, [500, 500, 500])
    b = _run(ref, whole, [500, 500, 500])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-7, atol=1e-5)
    mixed = FeatureExtractor(compiled=False)
    first = mixed.transform(whole.take(slice(0, 1000))).values
    mixed._compiled = True  # the same extractor (its state) continues on the compiled path
    rest = mixed.transform(whole.take(slice(1000, 1500))).values
    np.testing.assert_allclose(np.concatenate([first, rest]), b[0], rtol=1e-7, atol=1e-5)
    back = FeatureExtractor(compiled=True)
    first = back.transform(whole.take(slice(0, 1000))).values
    back._compiled = False  # and the NumPy path continues on the kernel's hashed tables
    rest = back.transform(whole.take(slice(1000, 1500))).values
    np.testing.assert_allclose(np.concatenate([first, rest]), b[0], rtol=1e-7, atol=1e-5)


def test_selection_follows_the_setting() -> None:
    assert FeatureExtractor().compiled  # Numba imports: on by default
    assert not FeatureExtractor(FeatureConfig(compiled=False)).compiled
    assert FeatureExtractor(FeatureConfig(compiled=False), compiled=True).compiled
    # The hub builds its flow monitor on the kernel only when hub.detection_compiled is set.
    assert _monitor_config(HubConfig(detection_compiled=False)).detector.features.compiled is False
    assert _monitor_config(HubConfig(detection_compiled=True)).detector.features.compiled is True
    # ... and its scoring pass likewise (a compile would otherwise stall the first scored report).
    assert _monitor_config(HubConfig(detection_compiled=False)).detector.scorer.autoencoder.compiled is False
    assert _monitor_config(HubConfig(detection_compiled=True)).detector.scorer.autoencoder.compiled is True


def test_compiled_without_numba_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features_module, "_kernel", lambda: None)
    with pytest.raises(ConfigError):
        FeatureExtractor(compiled=True)
    with pytest.raises(ConfigError):
        FeatureExtractor(FeatureConfig(compiled=True))
    assert not FeatureExtractor().compiled  # the default falls back to the NumPy path
