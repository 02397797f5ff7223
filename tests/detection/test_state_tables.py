"""One contract for the extractor's state tables: the sorted ``KeyTable`` and the kernel's ``HashedKeyTable``.

Both must answer every lookup alike after the same inserts, overwrites,
growth and removals (eviction uses ``keep``, trimming ``drop``), and list their
entries in the same (sorted) order, which trimming and serialisation rely on.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from iotguard.detection._tables import KeyTable, StateTable

HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def _tables(width: int) -> list[StateTable]:
    tables: list[StateTable] = [KeyTable(width)]
    if HAVE_NUMBA:
        from iotguard.detection._hashed import HashedKeyTable

        tables.append(HashedKeyTable(width))
    return tables


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hashed_table_answers_as_the_sorted_table(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sorted_table, hashed = _tables(3)
    for step in range(60):
        # Keys as the extractor makes them: host ids in the high bits, many near each other.
        keys = np.unique((rng.integers(0, 300, 400) << 32) | rng.integers(0, 50, 400))
        values = rng.random((keys.shape[0], 3))
        for table in (sorted_table, hashed):
            table.put(keys, values)
        if step % 7 == 6:
            mask = rng.random(len(sorted_table)) < 0.6
            for table in (sorted_table, hashed):
                table.keep(mask)
        if step % 5 == 4:  # trimming drops the oldest entries of the hosts over their cap
            held = sorted_table.items()[0]
            gone = held[rng.random(held.shape[0]) < 0.3]
            for table in (sorted_table, hashed):
                table.drop(gone)
        query = (rng.integers(0, 300, 500) << 32) | rng.integers(0, 50, 500)
        found, got = hashed.get(query, default=-1.0)
        want_found, want = sorted_table.get(query, default=-1.0)
        np.testing.assert_array_equal(found, want_found)
        np.testing.assert_array_equal(got, want)
        assert len(hashed) == len(sorted_table)
    keys, values = hashed.items()
    want_keys, want_values = sorted_table.items()
    np.testing.assert_array_equal(keys, want_keys)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(np.sort(hashed.keys_any_order()), want_keys)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_hashed_table_grows_and_stays_at_most_half_full() -> None:
    from iotguard.detection._hashed import HashedKeyTable

    table = HashedKeyTable(1)
    keys = np.arange(100_000, dtype=np.int64) * 7919
    table.put(keys, keys[:, None].astype(np.float64))
    assert len(table) == keys.shape[0]
    assert table.keys.shape[0] >= 2 * len(table)
    found, values = table.get(keys)
    assert found.all()
    np.testing.assert_array_equal(values[:, 0], keys.astype(np.float64))
    table.keep(np.arange(keys.shape[0]) % 2 == 0)
    found, _ = table.get(keys)
    np.testing.assert_array_equal(found, np.arange(keys.shape[0]) % 2 == 0)
