"""Shares' x-coordinates relative to the owner's holder list (ADR 0417), and reconstruction that still names
a wrong share."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from iotguard.analytics import secagg_shamir
from iotguard.analytics.secagg import (
    MAX_X,
    PRIME,
    AggregationError,
    Aggregator,
    Share,
    harary_neighbours,
    reconstruct_all,
    split,
)
from tests.analytics.secagg_helpers import graph_round

N, K, T, DIMS = 24, 8, 5, 32


def _graph_round(dropped: set[int]) -> tuple[Aggregator, list[Share], np.ndarray, dict[int, tuple[int, ...]]]:
    g = harary_neighbours(N, K, b"round-x")
    rng = np.random.default_rng(3)
    values = [rng.integers(0, 1 << 20, DIMS, dtype=np.uint32) for _ in range(N)]
    return (*graph_round(values, g, T, dropped), g)


def test_with_nobody_dropping_one_holder_set_serves_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every owner's holders sit at x = 1..k + 1, so 24 self-mask seeds need one set of coefficients (with
    x = holder index + 1 each owner of a Harary graph has its own)."""
    built: list[tuple[int, ...]] = []
    original = secagg_shamir._HolderSet

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, xs: Any, t: int) -> None:
            built.append(tuple(xs))
            super().__init__(xs, t)

    monkeypatch.setattr(secagg_shamir, "_HolderSet", Counting)
    agg, shares, expected, _ = _graph_round(set())
    assert np.array_equal(agg.unmask(shares), expected)
    assert built == [tuple(range(1, K + 2))]


def test_x_coordinate_is_the_position_in_the_owners_holder_list() -> None:
    agg, _, _, g = _graph_round(set())
    xs = agg.x_coordinates(4)
    assert sorted(xs) == sorted({*g[4], 4}) and sorted(xs.values()) == list(range(1, K + 2))
    assert all(xs[a] < xs[b] for a in xs for b in xs if a < b)  # ascending index, ascending x


def test_a_share_from_a_holder_outside_the_owners_list_has_no_x_and_is_refused() -> None:
    agg, shares, expected, g = _graph_round({2})
    stranger = next(h for h in range(N) if h not in g[0] and h != 0 and h != 2)
    for forged in (Share(0, stranger, "seed", 1), Share(N, 1, "seed", 1), Share(-1, 1, "seed", 1)):
        with pytest.raises(AggregationError) as e:
            agg.unmask([*shares, forged])
        assert e.value.reason == "share_malformed"
    assert np.array_equal(agg.unmask(shares), expected)


def test_x_coordinates_out_of_range_or_repeated_are_refused() -> None:
    ys = split(b"\x07" * 16, 5, 3)
    good = [(x, ys[x - 1]) for x in range(1, 6)]
    assert reconstruct_all({"s": good}, 3) == {"s": b"\x07" * 16}
    for bad in ([(0, 9), *good[1:]],  # x = 0 would be the secret itself
                [*good[:4], (MAX_X + 1, ys[4])],  # beyond any holder list
                [good[0], good[0], *good[2:]],  # one holder twice
                [good[1], good[0], *good[2:]]):  # not ascending
        with pytest.raises(AggregationError) as e:
            reconstruct_all({"s": bad}, 3)
        assert e.value.reason == "share_malformed"


@pytest.mark.parametrize("position", [0, 4, -1])
def test_one_wrong_share_at_any_position_names_its_owner(position: int) -> None:
    """With a dropped device the survivors' holder sets differ; a wrong seed share at the first, a middle or
    the last x-coordinate of one owner is still caught by the batched parity check and the owner named."""
    agg, shares, _, _ = _graph_round({2, 11})
    owner = 7
    holders = sorted(s.holder for s in shares if s.owner == owner and s.kind == "seed")
    victim = holders[position]
    bad = [dataclasses.replace(s, y=(s.y + 1) % PRIME) if (s.owner, s.holder, s.kind) == (owner, victim, "seed")
           else s for s in shares]
    with pytest.raises(AggregationError) as e:
        agg.unmask(bad)
    assert e.value.reason == "share_inconsistent" and f"({owner}, 'seed')" in str(e.value)
