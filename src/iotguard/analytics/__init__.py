"""Private analytics: central differential privacy over the fleet's readings.

:mod:`iotguard.analytics.central` releases counts, sums, means and
histograms with OpenDP measurements, bounding each data subject's
contribution and charging every subject read to the privacy-loss ledger
(all or nothing) before anything is computed. :mod:`iotguard.analytics.secagg`
is Bonawitz et al.'s secure aggregation (pairwise X25519 masks, Shamir-shared
seeds, dropout recovery). No I/O.
"""

from iotguard.analytics.central import STATISTICS, CentralQuery, Release, bound_contributions, release

__all__ = ["STATISTICS", "CentralQuery", "Release", "bound_contributions", "release"]
