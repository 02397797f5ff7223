"""A SecAgg+ round played in process, shared by the secure-aggregation tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from iotguard.analytics.secagg import Aggregator, Device, Share


def graph_round(values: Sequence[np.ndarray], g: Mapping[int, tuple[int, ...]], t: int,
                dropped: set[int]) -> tuple[Aggregator, list[Share], np.ndarray]:
    """Devices holding ``values`` on graph ``g`` advertise, share at threshold ``t`` and, except ``dropped``,
    send masked inputs and their unmasking shares; returns the aggregator, those shares and the exact sum
    of the survivors' values (mod 2^32)."""
    n, dims = len(values), len(values[0])
    devices = [Device(i, v) for i, v in enumerate(values)]
    agg = Aggregator(n, t, dims, g)
    for d in devices:
        agg.add_public_key(d.index, d.public_key)
        for s in d.shares_for_peers(g[d.index], t):
            devices[s.holder].receive_share(s)
    for d in devices:
        if d.index not in dropped:
            agg.add_masked(d.index, d.masked_input({v: agg.public_keys[v] for v in g[d.index]}))
    shares = [s for d in devices if d.index not in dropped
              for s in d.unmask_shares([v for v in (*g[d.index], d.index) if v not in dropped],
                                       [v for v in g[d.index] if v in dropped])]
    expected = sum((values[i].astype(np.uint64) for i in range(n) if i not in dropped), np.zeros(dims, np.uint64))
    return agg, shares, (expected % (1 << 32)).astype(np.uint32)
