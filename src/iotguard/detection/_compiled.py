"""Feature extraction compiled with Numba: an optional accelerator (internal).

The same definitions as the NumPy path of :class:`.features.FeatureExtractor`
(which stays the reference), computed in one pass over the batch in time
order: each flow updates the damped sums of its originating host, its
responding host and its channel in place, as the definition reads, instead
of grouping rows with sorts and solving the recurrences as blocked scans.
The channel and port keys of a batch are numbered by a small open-addressing
hash table instead of a sort.

This module imports Numba (BSD licence, ``pip install iotguard[accel]``) and
so is imported only when the extractor selects it. Functions compile on their
first call (a few seconds, once per process); nothing is written to disk.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["extract", "number_keys", "number_rows"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=False, nogil=True)
def _table_bits(n: int) -> int:  # pragma: no cover - compiled
    """log2 of the hash table size for ``n`` keys: at least twice as many slots as keys."""
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    return bits


@numba.njit(cache=False, nogil=True)
def number_keys(keys: IntArray) -> tuple[IntArray, IntArray]:  # pragma: no cover - compiled
    """Slot of each row's key (numbered by first appearance) and the first row of each slot.

    Open addressing with linear probing; the slot of a key is the top bits of
    its Fibonacci hash, so every bit of the key (host ids sit in the high bits) counts.
    """
    n = keys.shape[0]
    bits = _table_bits(n)
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    table_slot = np.full(1 << bits, -1, dtype=np.int64)
    slot = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    count = 0
    for i in range(n):
        k = keys[i]
        j = np.int64((np.uint64(k) * _GOLDEN) >> shift)
        while True:
            s = table_slot[j]
            if s < 0:
                table_slot[j] = count
                first[count] = i
                slot[i] = count
                count += 1
                break
            if keys[first[s]] == k:
                slot[i] = s
                break
            j = (j + 1) & mask
    return slot, first[:count].copy()


@numba.njit(cache=False, nogil=True)
def number_rows(codes: npt.NDArray[np.uint32]) -> tuple[IntArray, IntArray]:  # pragma: no cover - compiled
    """:func:`number_keys` for rows of character codes (host address strings): equal rows, equal slot.

    Rows are hashed whole and compared whole on a hash match, so distinct
    strings never share a slot.
    """
    n, width = codes.shape
    bits = _table_bits(n)
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    table_slot = np.full(1 << bits, -1, dtype=np.int64)
    table_hash = np.zeros(1 << bits, dtype=np.uint64)
    slot = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    count = 0
    for i in range(n):
        h = np.uint64(0)
        for c in range(width):
            h = (h ^ np.uint64(codes[i, c])) * _GOLDEN
        j = np.int64(h >> shift)
        while True:
            s = table_slot[j]
            if s < 0:
                table_slot[j] = count
                table_hash[j] = h
                first[count] = i
                slot[i] = count
                count += 1
                break
            if table_hash[j] == h:
                other = first[s]
                same = True
                for c in range(width):
                    if codes[i, c] != codes[other, c]:
                        same = False
                        break
                if same:
                    slot[i] = s
                    break
            j = (j + 1) & mask
    return slot, first[:count].copy()


@numba.njit(cache=False, nogil=True)
def extract(
    t: FloatArray,
    src: IntArray,
    dst: IntArray,
    orig_bytes: FloatArray,
    log_orig_bytes: FloatArray,
    no_reply: FloatArray,
    new_dst: npt.NDArray[np.bool_],
    new_port: npt.NDArray[np.bool_],
    chan_slot: IntArray,
    chan_state: FloatArray,
    rates: FloatArray,
    channel_rate: float,
    sums: FloatArray,
    t_sums: FloatArray,
    in_sums: FloatArray,
    t_in: FloatArray,
    first_seen: FloatArray,
    max_age: float,
    out: FloatArray,
    col: int,
) -> None:  # pragma: no cover - compiled
    """Host, age, channel and inbound columns of every row into ``out[:, col:]``; state updated in place.

    ``sums`` (hosts, R, 7) / ``t_sums`` and ``in_sums`` (hosts, R, 3) /
    ``t_in`` are the per-host damped sums and their times; ``chan_state``
    (slots, 6) holds each channel slot's saved state (last time, count,
    inter-arrival count, sum, sum of squares, time of the sums; zero counts
    and the slot's first time for a new channel) and ends as the state after
    the batch.
    """
    n = t.shape[0]
    n_rates = rates.shape[0]
    decay = np.empty(n_rates)
    for i in range(n):
        ti = t[i]
        h = src[i]
        gap = ti - t_sums[h]
        if gap < 0.0:
            gap = 0.0
        for r in range(n_rates):
            decay[r] = math.exp(-rates[r] * gap)
        lob = log_orig_bytes[i]
        nd = 1.0 if new_dst[i] else 0.0
        npo = 1.0 if new_port[i] else 0.0
        nr = no_reply[i]
        c = col
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
            out[i, c] = math.log1p(w)
            out[i, c + 1] = mean
            out[i, c + 2] = math.sqrt(var) if var > 1e-9 * second else 0.0
            out[i, c + 3] = math.log1p(sb)
            out[i, c + 4] = snd / w
            out[i, c + 5] = math.log1p(snd)
            out[i, c + 6] = math.log1p(snp)
            out[i, c + 7] = snr / w
            c += 8
        t_sums[h] = ti
        age = ti - first_seen[h]
        out[i, c] = math.log1p(min(max(age, 0.0), max_age))
        c += 1

        # channel: state columns last time, count, iat count, iat sum, iat sum of squares, time of the sums
        k = chan_slot[i]
        has = not math.isnan(chan_state[k, 0])
        iat = 0.0
        if has:
            iat = ti - chan_state[k, 0]
            if iat < 0.0:
                iat = 0.0
        cgap = ti - chan_state[k, 5]
        if cgap < 0.0:
            cgap = 0.0
        d = math.exp(-channel_rate * cgap)
        cnt = chan_state[k, 1] * d + 1.0
        n_iat = chan_state[k, 2] * d + (1.0 if has else 0.0)
        s_iat = chan_state[k, 3] * d + iat
        s_iat2 = chan_state[k, 4] * d + iat * iat
        chan_state[k, 0] = ti
        chan_state[k, 1] = cnt
        chan_state[k, 2] = n_iat
        chan_state[k, 3] = s_iat
        chan_state[k, 4] = s_iat2
        chan_state[k, 5] = ti
        mean = s_iat / max(n_iat, 1e-12) if n_iat > 0 else 0.0
        var = s_iat2 / max(n_iat, 1e-12) - mean * mean if n_iat > 0 else 0.0
        cv = math.sqrt(max(var, 0.0)) / max(mean, 1e-12) if n_iat >= 1.5 and mean > 0 else 1.0
        out[i, c] = math.log1p(cnt)
        out[i, c + 1] = math.log1p(mean)
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
            out[i, c] = math.log1p(w)
            out[i, c + 1] = s_new / w
            out[i, c + 2] = s_nr / w
            c += 3
        t_in[g] = ti
