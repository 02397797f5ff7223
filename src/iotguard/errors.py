"""One exception hierarchy for all of iotguard.

Every domain failure has its own subclass and a stable, machine-readable
reason ``code``. Codes are what operators, metrics and the audit log see;
the public edges (REST API, device replies) map them to public messages
through :data:`PUBLIC_MESSAGES`, so internals never leak to devices or API
clients.
"""

from __future__ import annotations

__all__ = [
    "PUBLIC_MESSAGES",
    "AttestationError",
    "AuthenticationError",
    "BudgetExhausted",
    "ConfigError",
    "ConsentError",
    "CustodyError",
    "DuplicateError",
    "EnrollmentError",
    "ExpiredError",
    "IntegrityError",
    "IotGuardError",
    "KeyStoreError",
    "MalformedError",
    "PolicyDenied",
    "ProofError",
    "PufQualityError",
    "ReplayError",
    "RevokedError",
    "RollbackError",
    "RootOfTrustUnsupported",
    "SecureBootError",
    "StaleError",
    "StorageError",
    "TamperError",
    "UnknownAlertError",
    "UnknownDeviceError",
    "UpdateRefused",
    "UsageLimitError",
    "public_message",
]
__all__ += ["RolloutStateError", "UnknownRolloutError"]


class IotGuardError(Exception):
    """Base class of every iotguard error.

    Attributes:
        code: Stable reason code (``snake_case``), used in metrics, audit
            entries and rejection counters.
    """

    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.code)
        if code is not None:
            self.code = code


class ConfigError(IotGuardError):
    """A configuration value is missing, malformed or unsafe."""

    code = "config_invalid"


class MalformedError(IotGuardError):
    """Untrusted bytes did not parse under the strict schema or size limits."""

    code = "malformed"


class IntegrityError(IotGuardError):
    """Authenticated decryption or a signature/MAC check failed."""

    code = "forged"


class ReplayError(IotGuardError):
    """A message was already seen or is older than the replay window."""

    code = "replay"


class DuplicateError(ReplayError):
    """A message inside the replay window that was already received (as opposed to one too old to tell)."""


class StaleError(ReplayError):
    """A signed request's timestamp lies outside the allowed window (too old or from the future)."""

    code = "stale"


class UnknownDeviceError(IotGuardError):
    """The device id (or its key epoch) is not registered."""

    code = "unknown_device"


class RevokedError(IotGuardError):
    """The device or credential was revoked or decommissioned."""

    code = "revoked"


class ExpiredError(IotGuardError):
    """The credential (a device's operational certificate) has expired."""

    code = "expired"


class EnrollmentError(IotGuardError):
    """Enrollment failed: bad, expired or reused token, or bad proof of possession."""

    code = "enrollment_failed"


class CustodyError(EnrollmentError):
    """A device's chain of custody is incomplete, forged, diverted or broken.

    Devices see an ordinary enrollment failure (``code``); operators and the
    audit log see ``reason``: ``custody_incomplete``, ``custody_forged``,
    ``custody_diverted`` or ``custody_broken``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AuthenticationError(IotGuardError):
    """A caller could not be authenticated."""

    code = "unauthenticated"


class PolicyDenied(IotGuardError):
    """The policy decision point denied the request."""

    code = "policy_denied"


class KeyStoreError(IotGuardError):
    """A key-store operation failed (missing key, sealed store unreadable...)."""

    code = "keystore_error"


class TamperError(KeyStoreError):
    """The key store detected tampering and zeroized its keys."""

    code = "tampered"


class PufQualityError(KeyStoreError):
    """A PUF failed its enrollment checks (biased, correlated or too noisy); no key is made from it."""

    code = "puf_quality"


class RootOfTrustUnsupported(KeyStoreError):
    """The key store is no root of trust: it has no measurement registers, attestation key or quote.

    Raised with code ``rot_unsupported`` (the class keeps its parent's code,
    which the hub's status table already maps).
    """


class SecureBootError(IntegrityError):
    """Secure boot refused a stage: its image or signature did not verify against the boot anchor.

    Raised with a ``boot_*`` reason code (``boot_signature_invalid``,
    ``boot_image_mismatch``, ...; see ``docs/attestation.md``).
    """


class AttestationError(ConfigError):
    """An appraisal could not start: no appraisal policy for the device's model (code ``no_appraisal_policy``)."""


class UsageLimitError(IotGuardError):
    """A key reached its usage limit (messages per key) and must be re-keyed."""

    code = "usage_limit"


class RollbackError(IotGuardError):
    """A version or counter went backwards (firmware, metadata, checkpoint)."""

    code = "rollback"


class ConsentError(IotGuardError):
    """The data subject has not consented to this purpose (or withdrew)."""

    code = "no_consent"


class BudgetExhausted(IotGuardError):
    """Releasing this would exceed the privacy budget."""

    code = "budget_exhausted"


class ProofError(IotGuardError):
    """A Merkle inclusion or consistency proof (or checkpoint) did not verify."""

    code = "bad_proof"


class UnknownAlertError(IotGuardError):
    """No alert with that id is stored."""

    code = "unknown_alert"


class StorageError(IotGuardError):
    """The store could not complete a durable operation."""

    code = "storage_error"


class UpdateRefused(IotGuardError):
    """A firmware update was refused: TUF verification, missing release, or wrong model."""

    code = "update_refused"


class UnknownRolloutError(IotGuardError):
    """No rollout campaign by that id."""

    code = "unknown_rollout"


class RolloutStateError(IotGuardError):
    """A rollout campaign cannot make that move from its state (or another one runs for the model)."""

    code = "rollout_state"


#: Public messages per reason code. Devices and API clients see only these;
#: operators see the code. ``tests/test_errors.py`` checks every code has one.
PUBLIC_MESSAGES: dict[str, str] = {
    "error": "request failed",
    "config_invalid": "invalid configuration",
    "malformed": "malformed message",
    "forged": "message failed authentication",
    "replay": "message already received",
    "stale": "request timestamp outside the allowed window",
    "unknown_device": "unknown device",
    "revoked": "credential revoked",
    "expired": "credential expired",
    "enrollment_failed": "enrollment failed",
    "unauthenticated": "authentication required",
    "locked_out": "too many attempts; try again later",
    "policy_denied": "not allowed",
    "keystore_error": "key store unavailable",
    "tampered": "key store unavailable",
    "puf_quality": "key store unavailable",
    "rot_unsupported": "key store cannot attest",
    "no_appraisal_policy": "attestation not configured for this device model",
    "attestation_key_mismatch": "evidence not signed by the device's attestation key",
    "usage_limit": "key must be renewed",
    "rollback": "version rollback refused",
    "no_consent": "no consent for this purpose",
    "budget_exhausted": "privacy budget exhausted",
    "bad_proof": "proof did not verify",
    "storage_error": "temporarily unavailable",
    "detector_state_conflict": "temporarily unavailable",
    "detector_state_missing": "temporarily unavailable",
    "detector_state_too_large": "temporarily unavailable",
    "detector_state_bad_key": "temporarily unavailable",
    "update_refused": "firmware update refused",
    "update_not_found": "firmware release not found",
    "update_wrong_model": "firmware release is for another device model",
    "update_release_malformed": "firmware release metadata is malformed",
    "unknown_alert": "unknown alert",
    # federated learning (docs/learning.md)
    "update_malformed": "model update is malformed",
    "update_dims": "model update does not fit the model",
    "update_not_finite": "model update is malformed",
    "update_norm_exceeded": "model update is too large",
    "update_stale": "model update is for an old model version",
    "update_duplicate": "model update already received",
    "parameters_shape": "model parameters do not fit the model",
    "parameters_not_finite": "model parameters are malformed",
    "not_eligible": "device does not take part in this training run",
    "run_not_running": "training run is not running",
    "unknown_run": "unknown training run",
    "unknown_model": "unknown model",
    "artifact_malformed": "model artifact is malformed",
    "unknown_rollout": "unknown rollout",
    "rollout_state": "rollout cannot do that in its current state",
    "attestation_key_not_certified": "attestation key not certified against the device's TPM",
    "ak_certification_failed": "attestation key certification failed",
    "no_endorsement_key": "no TPM endorsement key recorded for this device",
    "tpm_unsupported": "TPM support not available",
    "ek_certificate_untrusted": "TPM endorsement key has no valid manufacturer certificate chain",
    "ek_certificate_mismatch": "EK certificate does not certify this endorsement key",
    "ek_roots_not_configured": "no TPM manufacturer roots configured",
    "not_selected": "device is not selected for this training round; ask again for the next one",
    "too_few_participants": "too few devices can take part in this training round yet",
    "secure_only": "this training run takes updates only through secure aggregation",
    "compression_mismatch": "model update is not compressed the way this round asks",
    "compression_unsupported": "this training round offers no update compression the device can send",
    "ek_certificate_revoked": "TPM endorsement key certificate is revoked",
    "ek_crl_invalid": "a TPM manufacturer CRL does not verify",
    "ek_crl_stale": "a TPM manufacturer CRL is out of date",
    "wrong_phase": "the aggregation round is past this step",
    "round_unknown": "unknown aggregation round",
    "message_duplicate": "this step of the aggregation round was already received",
    "not_in_round": "device does not take part in this aggregation round",
}


def public_message(code: str) -> str:
    """Return the public message for a reason code (generic if unknown)."""
    return PUBLIC_MESSAGES.get(code, PUBLIC_MESSAGES["error"])
