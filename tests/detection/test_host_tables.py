"""The compiled path's host numbering, trimming and host matching agree with their references (ADR 0711).

The keyed host table (``HashedHostTable``) must number a batch's addresses
exactly as the dict (``DictHostTable``) does, including addresses chosen to
collide, long and IPv6 addresses, arrays of different string widths and
hosts evicted across batches; a hash match alone never makes two addresses
one host. The extractor on either table gives the same features and state.
"""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest

from iotguard.detection import FeatureConfig, FeatureExtractor, Flow, FlowBatch, rules
from iotguard.detection._hosts import MAX_HOST_WIDTH, DictHostTable
from iotguard.errors import MalformedError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba not installed")

T0 = 1_700_000_000.0


def _addresses(rng: random.Random, count: int) -> list[str]:
    """Addresses an attacker might send: shared prefixes, prefixes of each other, IPv6, the longest allowed,
    non-ASCII code points."""
    out = {"10.0.0.1", "10.0.0.10", "10.0.0.100", "fd00::1", "fd00::1:0", "8.8.8.8", "a" * MAX_HOST_WIDTH,
           "a" * (MAX_HOST_WIDTH - 1), "\u00e9t\u00e9", "\U0001f600"}
    while len(out) < count:
        kind = rng.randrange(4)
        if kind == 0:
            out.add(f"10.{rng.randrange(3)}.{rng.randrange(256)}.{rng.randrange(256)}")
        elif kind == 1:
            out.add(f"2001:db8::{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}")
        elif kind == 2:
            out.add("h" + "x" * rng.randrange(MAX_HOST_WIDTH - 1))
        else:
            out.add("".join(rng.choice("0123456789.:") for _ in range(rng.randrange(1, 20))))
    return sorted(out)


def _hashed() -> type:
    from iotguard.detection._hashed_hosts import HashedHostTable

    return HashedHostTable


@pytest.mark.parametrize("all_collide", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_hashed_host_table_numbers_as_the_dict(seed: int, all_collide: bool) -> None:
    """Same ids, same new addresses in the same order, same earliest times; with a key under which every
    address hashes alike (a long probe chain each) still never one host for two addresses."""
    rng = random.Random(seed)
    names = _addresses(rng, 400)
    reference, table = DictHostTable(), _hashed()()
    if all_collide:
        table._key[1:] = 0  # every address the same hash: only the whole-name comparison tells them apart
    top, free = 0, []
    for step in range(40):
        size = rng.choice([1, 3, 50, 700])
        hosts = np.array([rng.choice(names) for _ in range(size)], dtype=np.str_)
        if step % 3 == 0:  # the same strings in a wider array (zero-padded further)
            hosts = hosts.astype(f"<U{MAX_HOST_WIDTH + 8}")
        times = T0 + np.array([rng.random() * 100 for _ in range(size)])
        if step % 2:  # looked up, then added (the extractor's way when it must evict first)
            want, got = reference.find(hosts, times), table.find(hosts, times)
            for a, b in zip(want, got, strict=True):
                np.testing.assert_array_equal(a, b)
            ids = np.arange(top, top + want.first.shape[0], dtype=np.int64)[::-1].copy()
            top += ids.shape[0]
            reference.add(ids, hosts, want.first)
            table.add(ids, hosts, got.first)
        else:  # numbered and added in one pass, freed ids taken first
            spare = np.array(free, dtype=np.int64)
            want_n, got_n = reference.number(hosts, times, spare, top), table.number(hosts, times, spare, top)
            for a, b in zip(want_n[:3], got_n[:3], strict=True):
                np.testing.assert_array_equal(a, b)
            assert want_n[3] == got_n[3]
            del free[len(free) - want_n[3]:]
            top += want_n[1].shape[0] - want_n[3]
        if step % 5 == 4:  # eviction frees some hosts
            held = reference.ids()
            gone = held[[rng.random() < 0.3 for _ in range(held.shape[0])]]
            reference.remove(gone)
            table.remove(gone)
            free += gone.tolist()
        assert len(table) == len(reference)
        np.testing.assert_array_equal(table.ids(), reference.ids())
        assert table.names_of(table.ids()) == reference.names_of(reference.ids())
    for name in names:
        assert table.get(name) == reference.get(name)
    assert table.get("not held") == -1


def test_each_table_draws_its_own_key() -> None:
    table = _hashed()
    assert not np.array_equal(table()._key, table()._key)


def _flows(rng: random.Random, n: int, names: list[str]) -> list[Flow]:
    out, t = [], T0
    for k in range(n):
        near = names[(k // 150) % len(names):][:25] + names[:3]  # hosts come and go: eviction
        t += rng.choice([0.0, rng.expovariate(20.0), rng.expovariate(0.1)])
        out.append(Flow(t, rng.choice(near), 1024, rng.choice(near), rng.randint(1, 3000),
                        rng.choice(["tcp", "udp"]), rng.random(), rng.randint(0, 5000), rng.randint(0, 5000),
                        rng.choice(["SF", "S0", "REJ"]), rng.randint(1, 9), rng.randint(0, 9)))
    return out


@pytest.mark.parametrize("seed", [5, 6])
def test_extractor_on_the_keyed_table_equals_the_dict_reference(seed: int) -> None:
    """The compiled path (keyed host table) and the NumPy path (dict) across batches with eviction, trimming,
    IPv6, the longest addresses and batches whose string arrays have different widths."""
    rng = random.Random(seed)
    names = _addresses(rng, 120)
    flows = _flows(rng, 4000, names)
    cfg = FeatureConfig(max_hosts=32, max_pairs_per_host=8)
    fast, ref = FeatureExtractor(cfg, compiled=True), FeatureExtractor(cfg, compiled=False)
    i = 0
    while i < len(flows):
        size = rng.choice([1, 7, 100, 600])
        batch = FlowBatch.from_flows(flows[i:i + size])
        got, want = fast.transform(batch), ref.transform(batch)
        np.testing.assert_array_equal(got.new_dst, want.new_dst)
        np.testing.assert_array_equal(got.new_port, want.new_port)
        np.testing.assert_allclose(got.values, want.values, rtol=1e-7, atol=1e-5)
        i += size
        assert fast.hosts == ref.hosts <= 32
        held = fast._hosts.ids()
        assert fast._host_names(held) == ref._host_names(held)
        np.testing.assert_array_equal(fast._last[held], ref._last[held])
        np.testing.assert_array_equal(fast._first[held], ref._first[held])
    assert fast._free == ref._free


def test_an_address_over_the_limit_is_refused_on_both_paths() -> None:
    long_name = "x" * (MAX_HOST_WIDTH + 1)
    base = FlowBatch.from_flows([Flow(T0, "10.0.0.1", 1, "10.0.0.2", 80, "tcp", 0.1, 1, 1, "SF", 1, 1)])
    batch = FlowBatch(**{**{k: getattr(base, k) for k in base.__dataclass_fields__},
                         "orig_h": np.array([long_name], dtype=np.str_)})
    for compiled in (True, False):
        with pytest.raises(MalformedError) as err:
            FeatureExtractor(compiled=compiled).transform(batch)
        assert err.value.code == "flow_bad_address"
    # The keyed table itself never cuts an address short (two addresses alike in their first 64 would merge).
    with pytest.raises(MalformedError):
        _hashed()().find(np.array([long_name, long_name[:-1] + "y"]), np.zeros(2))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_trimming_keeps_each_hosts_most_recent_entries(seed: int) -> None:
    """Per host over the cap, the ``max_pairs_per_host`` most recently used entries stay (ties: lower key)."""
    rng = np.random.default_rng(seed)
    fx = FeatureExtractor(FeatureConfig(max_pairs_per_host=8), compiled=True)
    hosts = rng.integers(0, 6, 300)
    keys = np.unique((hosts << 18) | rng.integers(0, 1 << 18, 300))
    times = rng.integers(0, 20, keys.shape[0]).astype(np.float64)  # many ties
    fx._ports.put(keys, times[:, None])
    fx._trim()
    want = []
    for h in np.unique(keys >> 18).tolist():
        mine = np.flatnonzero((keys >> 18) == h)
        order = sorted(mine.tolist(), key=lambda k: (-times[k], keys[k]))
        want += [int(keys[k]) for k in order[:8]]
    np.testing.assert_array_equal(fx._ports.items()[0], np.sort(np.array(want)))


def test_compiled_host_matching_equals_the_numpy_comparison() -> None:
    """``_index_among`` (a rule's few hosts in a batch) on addresses that share prefixes, are prefixes of each
    other or differ only in length, in arrays of different widths."""
    rng = random.Random(9)
    names = _addresses(rng, 200)
    targets = np.array(["10.0.0.1", "10.0.0.10", "a" * MAX_HOST_WIDTH, "fd00::1", "\U0001f600"], dtype=np.str_)
    for width in (None, f"<U{MAX_HOST_WIDTH + 3}"):
        hosts = np.array([rng.choice(names) for _ in range(2000)], dtype=np.str_)
        if width:
            hosts = hosts.astype(width)
        # Narrow targets too: "10.0.0.10" (9 wide) must not match the row "10.0.0.100".
        for t in (targets, np.array(targets[:2].tolist(), dtype=np.str_), targets.astype("<U80")):
            got = rules._index_among(hosts, t)
            np.testing.assert_array_equal(got, rules._index_among_numpy(hosts, t))
            assert (got >= 0).any()
