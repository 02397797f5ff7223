"""Private analytics: central differential privacy, one ledger per subject, secure and homomorphic sums.

:mod:`iotguard.analytics.central` releases counts, sums, means, histograms
and quantiles (also per group) with OpenDP measurements, bounding each data
subject's contribution and charging every subject read (all or nothing)
before anything is computed. :mod:`iotguard.analytics.ledger` is the one
privacy-loss ledger per data subject across local DP, central DP and
federated learning. :mod:`iotguard.analytics.secagg` is Bonawitz et al.'s
secure aggregation (pairwise X25519 masks, Shamir-shared seeds, dropout
recovery). No I/O.
"""

from iotguard.analytics.central import (
    STATISTICS,
    CentralQuery,
    Charger,
    Release,
    bound_contributions,
    release,
    release_grouped,
)
from iotguard.analytics.ledger import (
    CHARGED_SOURCES,
    InMemorySubjectLedgerStore,
    LedgerLine,
    SourceCharges,
    SubjectLedger,
    SubjectLedgerStore,
    zcdp_epsilon,
)

__all__ = [
    "CHARGED_SOURCES",
    "STATISTICS",
    "CentralQuery",
    "Charger",
    "InMemorySubjectLedgerStore",
    "LedgerLine",
    "Release",
    "SourceCharges",
    "SubjectLedger",
    "SubjectLedgerStore",
    "bound_contributions",
    "release",
    "release_grouped",
    "zcdp_epsilon",
]
