"""The flow rules' per-flow tests compiled with Numba: an optional accelerator (internal).

:meth:`.inbound.InboundProbeRule._candidates_numpy` is the reference: about
twenty NumPy calls per batch (attempt tests, a gather of seven feature
columns, threshold comparisons, the sweep product), each over a batch of a
thousand flows, so call overhead is most of the rule's cost. Here the same
tests run as one pass over the flows, reading the feature columns of an
attempt only. The results are the same rows (tested against the reference).

:func:`index_among` finds which of a rule's few hosts (those with a judged
baseline, or those still learning) each flow's host is, in one pass over the
address strings' code points, instead of one NumPy string comparison over
the batch per host (the reference, :func:`.rules._index_among_numpy`).

Imports Numba (BSD licence); the functions compile on their first call.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["inbound_candidates", "index_among"]


@numba.njit(cache=False, nogil=True)
def inbound_candidates(state: npt.NDArray[np.int64], orig_bytes: npt.NDArray[np.float64],
                       resp_bytes: npt.NDArray[np.float64], resp_p: npt.NDArray[np.int64],
                       proto: npt.NDArray[np.int64], values: npt.NDArray[np.float64],
                       index: npt.NDArray[np.intp], log_thresholds: npt.NDArray[np.float64],
                       failed_state: npt.NDArray[np.bool_], reset_state: npt.NDArray[np.bool_],
                       login_port: npt.NDArray[np.bool_], tcp: int,
                       min_sources: npt.NDArray[np.float64]
                       ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:  # pragma: no cover - compiled
    """Rows where the rule's count condition holds on an attempt, and whether each is a login-port connection.

    ``index`` names the seven feature columns in the reference's order (new-source rate and share, new
    ports, at the short and the long half-life; then the channel rate); ``log_thresholds`` are their
    thresholds on the columns' log1p scale. Codes outside a table count as no match.
    """
    n = state.shape[0]
    rows = np.empty(n, dtype=np.int64)
    logins = np.empty(n, dtype=np.bool_)
    k = 0
    for i in range(n):
        s = state[i]
        known = 0 <= s < failed_state.shape[0]
        failed = known and (failed_state[s] or (reset_state[s] and orig_bytes[i] == 0 and resp_bytes[i] == 0))
        p = resp_p[i]
        login = proto[i] == tcp and 0 <= p < login_port.shape[0] and login_port[p]
        if not (failed or login):
            continue
        c0 = values[i, index[0]]
        c3 = values[i, index[3]]
        hit = False
        if c0 >= log_thresholds[0] and c3 >= log_thresholds[3]:
            # The sweep count: inbound rate x share of new sources, at both half-lives.
            hit = (math.expm1(c0) * values[i, index[1]] / min_sources[0] >= 1.0
                   and math.expm1(c3) * values[i, index[4]] / min_sources[1] >= 1.0)
        if not hit and values[i, index[2]] >= log_thresholds[2] and values[i, index[5]] >= log_thresholds[5]:
            hit = True
        if not hit and login and values[i, index[6]] >= log_thresholds[6]:
            hit = True
        if hit:
            rows[k] = i
            logins[k] = login
            k += 1
    return rows[:k], logins[:k]


@numba.njit(cache=False, nogil=True)
def index_among(codes: npt.NDArray[np.uint32],
                targets: npt.NDArray[np.uint32]) -> npt.NDArray[np.intp]:  # pragma: no cover - compiled
    """Per row of ``codes``, the first row of ``targets`` holding the same string, or -1.

    Both are strings as the code points NumPy stores them in (one row each, zero-padded to the
    array's width; the two widths may differ). Every pair is compared up to the first differing code
    point: meant for a few targets (a rule's handful of hosts), not a lookup table.
    """
    n, width = codes.shape
    m, t_width = targets.shape
    common = min(width, t_width)
    out = np.full(n, -1, dtype=np.intp)
    for i in range(n):
        # Past the common width only one side can hold code points: a row holding any matches no target
        # that ends within it, and a target holding any no row.
        longer = False
        for c in range(common, width):
            if codes[i, c] != 0:
                longer = True
                break
        if longer:
            continue
        for k in range(m):
            same = True
            # From the end: addresses sharing a prefix (a site's) differ in their last code points or length.
            for c in range(common - 1, -1, -1):
                if codes[i, c] != targets[k, c]:
                    same = False
                    break
            if same:
                for c in range(common, t_width):
                    if targets[k, c] != 0:
                        same = False
                        break
            if same:
                out[i] = k
                break
    return out
