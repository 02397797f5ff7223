"""Feature extraction compiled with Numba: an optional accelerator (internal).

The same definitions as the NumPy path of :class:`.features.FeatureExtractor`
(which stays the reference), computed in one pass over the batch in time
order: each flow updates the damped sums of its originating host, its
responding host and its channel in place, as the definition reads, instead
of grouping rows with sorts and solving the recurrences as blocked scans.
The flow's own columns are computed in the same pass, and the persistent
channel and port tables are open-addressing hash tables
(:class:`._hashed.HashedKeyTable`) that the pass probes and extends in place
(ADR 0706). Host addresses are numbered by a keyed hash table that a
compiled pass probes (:class:`._hashed_hosts.HashedHostTable`, ADR 0711).
The logarithms are not taken in the pass: a scalar ``log`` costs about four
times NumPy's vectorised one per value, and they were half the pass's time.
The flow's own (bytes, packets, duration) come in already taken; the pass
writes the arguments of the others (the hosts' damped counts, the channel's
rate and mean gap, the host's age) to ``deferred``, and the caller takes
``np.log1p`` over that array in one call before :func:`place_deferred` puts
them in their columns.

This module imports Numba (BSD licence, ``pip install iotguard[accel]``) and
so is imported only when the extractor selects it. Functions compile on their
first call (a few seconds, once per process); nothing is written to disk.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from iotguard.detection._hashed import HashedKeyTable, probe
from iotguard.detection._hashed_hosts import HashedHostTable

__all__ = ["HashedHostTable", "HashedKeyTable", "extract_batch"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


# The NumPy error model: no ZeroDivisionError branch per division (every divisor here is at least 1 or guarded).
@numba.njit(cache=False, nogil=True, error_model="numpy")
def extract_batch(
    t: FloatArray,
    src: IntArray,
    dst: IntArray,
    orig_bytes: FloatArray,
    resp_pkts: FloatArray,
    state: IntArray,
    proto: IntArray,
    resp_p: IntArray,
    service_known: IntArray,
    state_flags: npt.NDArray[np.bool_],
    proto_codes: IntArray,
    c_keys: IntArray,
    c_values: FloatArray,
    c_shift: np.uint64,
    p_keys: IntArray,
    p_values: FloatArray,
    p_shift: np.uint64,
    rates: FloatArray,
    channel_rate: float,
    sums: FloatArray,
    t_sums: FloatArray,
    in_sums: FloatArray,
    t_in: FloatArray,
    first_seen: FloatArray,
    max_age: float,
    out: FloatArray,
    new_dst: IntArray,
    new_port: IntArray,
    last_seen: FloatArray,
    logs: FloatArray,
    deferred: FloatArray,
    deferred_cols: IntArray,
) -> tuple[int, int]:  # pragma: no cover - compiled
    """Every column of every row into ``out``; host, channel and port state updated in place.

    ``state_flags`` (connection states, 3) says per state code whether it is
    a no-reply, rejected and established state; ``proto_codes`` holds the
    codes of tcp, udp and icmp. ``sums`` (hosts, R, 7) / ``t_sums`` and
    ``in_sums`` (hosts, R, 3) / ``t_in`` are the per-host damped sums and
    their times. The channel and port tables are the arrays of a
    :class:`._hashed.HashedKeyTable` with room for one new key per row. A
    flow's channel (port) is new when its key is not in the table: it is
    inserted (channel state: no previous time, zero counts, the sums' time
    the flow's), so a later flow of the batch finds it, as the NumPy path's
    first-use-in-the-batch rule reads. ``new_dst`` and ``new_port`` (zeros) get
    1 where a flow's channel (port) is new; ``last_seen`` each host's latest
    time, a responder's write winning over an originator's as on the NumPy
    path. ``logs`` (5, n) holds ``log1p`` of each flow's duration, originator
    and responder bytes and packets; ``deferred`` (n, 5 R + 3) gets, per flow,
    the values whose ``log1p`` the columns ``deferred_cols`` hold (the caller
    takes it and places them). Returns the channel and port keys added.
    """
    n = t.shape[0]
    n_rates = rates.shape[0]
    decay = np.empty(n_rates)
    added_c = 0
    added_p = 0
    for i in range(n):
        ti = t[i]
        # the flow itself
        lob = logs[1, i]
        lrb = logs[2, i]
        s = state[i]
        pr = proto[i]
        nr = 1.0 if state_flags[s, 0] and resp_pkts[i] == 0 else 0.0
        out[i, 0] = logs[0, i]
        out[i, 1] = lob
        out[i, 2] = lrb
        out[i, 3] = logs[3, i]
        out[i, 4] = logs[4, i]
        out[i, 5] = lob - lrb
        out[i, 6] = nr
        out[i, 7] = 1.0 if state_flags[s, 1] else 0.0
        out[i, 8] = 1.0 if state_flags[s, 2] else 0.0
        out[i, 9] = 1.0 if pr == proto_codes[0] else 0.0
        out[i, 10] = 1.0 if pr == proto_codes[1] else 0.0
        out[i, 11] = 1.0 if pr == proto_codes[2] else 0.0
        out[i, 12] = 1.0 if service_known[i] != 0 else 0.0
        out[i, 13] = 1.0 if resp_p[i] < 1024 else 0.0
        c = 14
        j = 0  # the next deferred logarithm's row in ``deferred``

        # novelty: the channel and the (protocol, port) looked up, and inserted when new
        h = src[i]
        key = (h << 32) | dst[i]
        k = probe(c_keys, c_shift, key)
        nd = 0.0
        if c_keys[k] == -1:
            c_keys[k] = key
            c_values[k, 0] = math.nan
            c_values[k, 1] = 0.0
            c_values[k, 2] = 0.0
            c_values[k, 3] = 0.0
            c_values[k, 4] = 0.0
            c_values[k, 5] = ti
            added_c += 1
            nd = 1.0
            new_dst[i] = 1
        key = (h << 18) | (pr << 16) | resp_p[i]
        kp = probe(p_keys, p_shift, key)
        npo = 0.0
        if p_keys[kp] == -1:
            p_keys[kp] = key
            added_p += 1
            npo = 1.0
            new_port[i] = 1
        p_values[kp, 0] = ti

        # per originating host
        gap = ti - t_sums[h]
        if gap < 0.0:
            gap = 0.0
        for r in range(n_rates):
            decay[r] = math.exp(-rates[r] * gap)
        for r in range(n_rates):
            d = decay[r]
            w = sums[h, r, 0] * d + 1.0
            s1 = sums[h, r, 1] * d + lob
            s2 = sums[h, r, 2] * d + lob * lob
            sb = sums[h, r, 3] * d + orig_bytes[i]
            snd = sums[h, r, 4] * d + nd
            snp = sums[h, r, 5] * d + npo
            snr = sums[h, r, 6] * d + nr
            sums[h, r, 0] = w
            sums[h, r, 1] = s1
            sums[h, r, 2] = s2
            sums[h, r, 3] = sb
            sums[h, r, 4] = snd
            sums[h, r, 5] = snp
            sums[h, r, 6] = snr
            mean = s1 / w
            second = s2 / w
            var = second - mean * mean
            out[i, c + 1] = mean
            out[i, c + 2] = math.sqrt(var) if var > 1e-9 * second else 0.0
            out[i, c + 4] = snd / w
            out[i, c + 7] = snr / w
            deferred[i, j] = w
            deferred[i, j + 1] = sb
            deferred[i, j + 2] = snd
            deferred[i, j + 3] = snp
            deferred_cols[j] = c
            deferred_cols[j + 1] = c + 3
            deferred_cols[j + 2] = c + 5
            deferred_cols[j + 3] = c + 6
            j += 4
            c += 8
        t_sums[h] = ti
        age = ti - first_seen[h]
        deferred[i, j] = min(max(age, 0.0), max_age)
        deferred_cols[j] = c
        j += 1
        c += 1

        # channel: state columns last time, count, iat count, iat sum, iat sum of squares, time of the sums
        has = not math.isnan(c_values[k, 0])
        iat = 0.0
        if has:
            iat = ti - c_values[k, 0]
            if iat < 0.0:
                iat = 0.0
        cgap = ti - c_values[k, 5]
        if cgap < 0.0:
            cgap = 0.0
        d = math.exp(-channel_rate * cgap)
        cnt = c_values[k, 1] * d + 1.0
        n_iat = c_values[k, 2] * d + (1.0 if has else 0.0)
        s_iat = c_values[k, 3] * d + iat
        s_iat2 = c_values[k, 4] * d + iat * iat
        c_values[k, 0] = ti
        c_values[k, 1] = cnt
        c_values[k, 2] = n_iat
        c_values[k, 3] = s_iat
        c_values[k, 4] = s_iat2
        c_values[k, 5] = ti
        mean = s_iat / max(n_iat, 1e-12) if n_iat > 0 else 0.0
        var = s_iat2 / max(n_iat, 1e-12) - mean * mean if n_iat > 0 else 0.0
        cv = math.sqrt(max(var, 0.0)) / max(mean, 1e-12) if n_iat >= 1.5 and mean > 0 else 1.0
        deferred[i, j] = cnt
        deferred[i, j + 1] = mean
        deferred_cols[j] = c
        deferred_cols[j + 1] = c + 1
        j += 2
        out[i, c + 2] = min(cv, 5.0)
        c += 3

        # inbound, per responding host
        g = dst[i]
        gap = ti - t_in[g]
        if gap < 0.0:
            gap = 0.0
        for r in range(n_rates):
            d = math.exp(-rates[r] * gap)
            w = in_sums[g, r, 0] * d + 1.0
            s_new = in_sums[g, r, 1] * d + nd
            s_nr = in_sums[g, r, 2] * d + nr
            in_sums[g, r, 0] = w
            in_sums[g, r, 1] = s_new
            in_sums[g, r, 2] = s_nr
            deferred[i, j] = w
            deferred_cols[j] = c
            j += 1
            out[i, c + 1] = s_new / w
            out[i, c + 2] = s_nr / w
            c += 3
        t_in[g] = ti
    # Each host's last time seen: its latest row as an originator, then as a responder (which wins).
    for i in range(n):
        last_seen[src[i]] = t[i]
    for i in range(n):
        last_seen[dst[i]] = t[i]
    return added_c, added_p


@numba.njit(cache=False, nogil=True)
def place_deferred(deferred: FloatArray, cols: IntArray, out: FloatArray) -> None:  # pragma: no cover - compiled
    """``out[i, cols[j]] = deferred[i, j]``: the deferred logarithms into their columns."""
    for i in range(out.shape[0]):
        for j in range(cols.shape[0]):
            out[i, cols[j]] = deferred[i, j]
