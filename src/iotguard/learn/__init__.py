"""Federated learning: train where the data is, share only protected updates.

Domain package, no I/O. :mod:`~iotguard.learn.model` (NumPy models),
:mod:`~iotguard.learn.client` (Flower-style ``NumPyClient`` and the device's
update pipeline), :mod:`~iotguard.learn.strategy` (FedAvg, FedBuff),
:mod:`~iotguard.learn.robust` (norm checks, median, trimmed mean),
:mod:`~iotguard.learn.compress` (top-k with error feedback, 8-bit),
:mod:`~iotguard.learn.dp` (DP-FedAvg, Rényi accountant, ledger charges),
:mod:`~iotguard.learn.secure` (updates through secure aggregation),
:mod:`~iotguard.learn.simulation` (simulated clock), :mod:`~iotguard.learn.data`,
:mod:`~iotguard.learn.artifact` (signed model artifacts a device verifies and runs).
"""

from iotguard.learn.artifact import ModelArtifact, sign_artifact, verify_artifact
from iotguard.learn.client import LocalTrainingClient, NumPyClient, Participant, RoundConfig, Update
from iotguard.learn.compress import Compression, UpdateEncoder, decode_update
from iotguard.learn.dp import DpConfig, PrivacyCharge, RdpAccountant
from iotguard.learn.model import Model, NDArrays
from iotguard.learn.strategy import FedAvg, FedAvgConfig, FedBuff, FedBuffConfig, RoundOutcome
from iotguard.learn.unlearning import ShardChange, SisaEnsemble

__all__ = [
    "Compression",
    "DpConfig",
    "FedAvg",
    "FedAvgConfig",
    "FedBuff",
    "FedBuffConfig",
    "LocalTrainingClient",
    "Model",
    "ModelArtifact",
    "NDArrays",
    "NumPyClient",
    "Participant",
    "PrivacyCharge",
    "RdpAccountant",
    "RoundConfig",
    "RoundOutcome",
    "ShardChange",
    "SisaEnsemble",
    "Update",
    "UpdateEncoder",
    "decode_update",
    "sign_artifact",
    "verify_artifact",
]
