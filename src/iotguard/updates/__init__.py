"""Secure firmware updates with TUF (python-tuf): repository tooling and releases.

Domain package: no I/O. :class:`FirmwareRepository` builds and signs the
metadata; the hub serves :meth:`FirmwareRepository.files`; the agent's
update client (``iotguard.agent.firmware``) verifies with ``tuf.ngclient``.
"""

from iotguard.updates.model_target import ModelTarget, model_target_path, model_versions
from iotguard.updates.release import MODEL_PATTERN, FirmwareRelease, target_path
from iotguard.updates.repository import ExpiryPolicy, FirmwareRepository
from iotguard.updates.signer import KeyStoreSigner, ed25519_key

__all__ = [
    "MODEL_PATTERN",
    "ExpiryPolicy",
    "FirmwareRelease",
    "FirmwareRepository",
    "KeyStoreSigner",
    "ModelTarget",
    "ed25519_key",
    "model_target_path",
    "model_versions",
    "target_path",
]
