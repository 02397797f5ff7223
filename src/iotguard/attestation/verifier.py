"""The verifier: appraises boot evidence and returns an attestation result.

Given the token bytes, the attestation key bound to the device (from its
enrollment), the nonce the caller issued, the device model and the time,
:meth:`Verifier.appraise`:

1. parses the token strictly (:func:`~iotguard.wire.eat.decode_evidence`);
2. checks its signature with the device's AK and that the UEID names that AK
   (``instance-identity``). TPM evidence (an ES256 AK) must be quote-signed
   (ADR 0813): its one signature is over a ``TPMS_ATTEST`` that starts with
   ``TPM_GENERATED_VALUE``, is of type ``TPM_ST_ATTEST_QUOTE``, and whose
   ``extraData`` is SHA-256 of the token's ``Sig_structure``;
3. checks freshness: the nonce is the one issued, the evidence is younger than
   the model's maximum age and not from the future;
4. checks the quote: its format fits the key-store kind, a software quote's
   nonce, and the PCR selection (the policy's stages' PCRs);
5. replays the event log from zeroed PCRs and compares the result with the
   quoted PCR digest, and the log with its digest claim;
6. compares each stage's measurement with the **reference values** of the
   claimed firmware version (``executables``, ``configuration``);
7. rates the root of trust (``hardware``);
8. weighs the claims with the model's **appraisal policy** into an overall tier.

A token that fails 1-5 gets no further: the claims it makes cannot be
believed, so the result is contraindicated with the claims left unappraised.
Findings are returned, never raised; only a missing policy for the model
raises (there is nothing to appraise against).

Only pure functions of immutable inputs that repeat across a fleet are cached
(ADR 0816): the replay of an event log under a policy's stages. Everything
that depends on the token (signature, nonce, age, the comparison of the
replay with this quote's PCR digest) or on changeable state (reference
values) is checked per appraisal.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType

from iotguard.attestation.policy import AppraisalPolicy, ClaimWeight, ModelPolicy
from iotguard.attestation.quote import QuoteInfo, parse_quote, verify_signature
from iotguard.attestation.reference import ReferenceRelease, ReferenceValues
from iotguard.attestation.result import AR4SI_CLAIMS, AttestationResult, ClaimAppraisal, Tier
from iotguard.clock import utc
from iotguard.errors import AttestationError, IntegrityError, MalformedError
from iotguard.keys.rot import (
    PCR_DIGEST_SIZE,
    AttestationKey,
    AttestationKeyAlgorithm,
    QuoteFormat,
    extend_pcr,
    pcr_composite_digest,
)
from iotguard.wire.eat import TPM_QUOTE_ALGORITHM, BootEvent, Evidence, decode_evidence, ueid_of

__all__ = ["Verifier"]

_ZERO = bytes(PCR_DIGEST_SIZE)
_ueid = lru_cache(maxsize=4096)(ueid_of)
_RANK = {Tier.AFFIRMING: 0, Tier.NONE: 1, Tier.WARNING: 2, Tier.CONTRAINDICATED: 3}
_NOT_APPRAISED = ClaimAppraisal()
_AFFIRMED = ClaimAppraisal(Tier.AFFIRMING)
# Enum members read once: a member lookup on the class goes through a descriptor in Python 3.11.
_AFFIRMING, _NONE, _WARNING, _CONTRAINDICATED = Tier.AFFIRMING, Tier.NONE, Tier.WARNING, Tier.CONTRAINDICATED
_IGNORED, _ADVISORY, _REQUIRED = ClaimWeight.IGNORED, ClaimWeight.ADVISORY, ClaimWeight.REQUIRED
_ES256, _ES256_NAME = AttestationKeyAlgorithm.ES256, AttestationKeyAlgorithm.ES256.value
_TPM2_QUOTE, _SOFTWARE_QUOTE = QuoteFormat.TPM2.value, QuoteFormat.SOFTWARE.value
#: Most distinct (event log, stages) replays kept; a fleet boots few releases under few policies.
_REPLAY_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class _Replay:
    """An event log replayed from zeroed PCRs under one policy's stages (a pure function of both).

    Attributes:
        events: The log replayed (a cache hit must be of an equal log).
        refusal: ``event_outside_quote`` or ``unexpected_event`` if the log
            cannot be replayed, else ``""``.
        pcr_digest: The composite digest of the replayed PCRs (``b""`` if refused).
        measured: Each stage's measurement.
        complete: Every stage of the policy was measured.
    """

    events: tuple[BootEvent, ...]
    refusal: str
    pcr_digest: bytes
    measured: Mapping[str, bytes]
    complete: bool


def _replay_log(events: tuple[BootEvent, ...], stages: Mapping[str, int], selection: tuple[int, ...]) -> _Replay:
    pcrs = dict.fromkeys(selection, _ZERO)
    measured: dict[str, bytes] = {}
    for event in events:
        pcr, stage = event.pcr, event.stage
        old = pcrs.get(pcr)
        if old is None:
            return _Replay(events, "event_outside_quote", b"", MappingProxyType(measured), False)
        pcrs[pcr] = extend_pcr(old, event.digest)
        if stage in measured or stages.get(stage) != pcr:
            return _Replay(events, "unexpected_event", b"", MappingProxyType(measured), False)
        measured[stage] = event.digest
    complete = not set(stages) - set(measured)
    return _Replay(events, "", pcr_composite_digest(pcrs, selection), MappingProxyType(measured), complete)


_replays: dict[tuple[bytes, tuple[tuple[str, int], ...]], _Replay] = {}


def _replay_of(evidence: Evidence, policy: ModelPolicy) -> _Replay:
    """The replay of the evidence's event log under the policy's stages, computed once per distinct pair.

    Keyed by the SHA-256 of the log as received and the policy's stages
    (which determine its PCR selection); a hit counts only if its log equals
    this one, so the cache never stands on the hash alone. Only the replay is
    cached: the comparison with this quote's PCR digest is made per appraisal.
    """
    events = evidence.claims.event_log
    key = (evidence.event_log_sha256, policy.stage_pcrs)
    cached = _replays.get(key)
    if cached is not None and (cached.events is events or cached.events == events):
        return cached
    replay = _replay_log(events, policy.stages, policy.pcr_selection)
    if len(_replays) >= _REPLAY_CACHE_SIZE:
        _replays.clear()
    _replays[key] = replay
    return replay


class _Refused(Exception):
    """Internal: the evidence cannot be believed; ``claim`` is where it failed."""

    def __init__(self, claim: str, reason: str) -> None:
        super().__init__(reason)
        self.claim, self.reason = claim, reason


class Verifier:
    """Appraises boot evidence against reference values and an appraisal policy.

    Args:
        reference_values: The allowed firmware releases.
        policy: Appraisal policies by device model.
    """

    def __init__(self, reference_values: ReferenceValues, policy: AppraisalPolicy) -> None:
        self._references = reference_values
        self._policy = policy

    def appraise(
        self,
        token: bytes,
        *,
        attestation_key: AttestationKey,
        expected_nonce: bytes,
        model: str,
        now: datetime,
    ) -> AttestationResult:
        """Appraise one token.

        Args:
            token: The evidence bytes as received (untrusted).
            attestation_key: The AK bound to the device at enrollment.
            expected_nonce: The nonce the caller issued for this appraisal
                (the caller makes sure each nonce is used once).
            model: The device's model (from the registry, not from the evidence).
            now: Appraisal time (aware UTC).

        Raises:
            AttestationError: (code ``no_appraisal_policy``) no policy for ``model``.
        """
        policy = self._policy.for_model(model)
        if policy is None:
            raise AttestationError(f"no appraisal policy for model {model!r}", code="no_appraisal_policy")
        vector: dict[str, ClaimAppraisal] = dict.fromkeys(AR4SI_CLAIMS, _NOT_APPRAISED)
        evidence: Evidence | None = None
        try:
            decoded = decode_evidence(token)
            signed_quote = self._check_signature(decoded, attestation_key)
            # From here on the claims are the device's own: the result may quote them.
            evidence = decoded
            quote = self._authenticate(evidence, signed_quote, attestation_key, expected_nonce, policy, now)
            measured = self._replay(evidence, quote, policy)
        except _Refused as refused:
            vector[refused.claim] = ClaimAppraisal(Tier.CONTRAINDICATED, (refused.reason,))
            return self._result(policy, vector, Tier.CONTRAINDICATED, (refused.reason,), evidence, now)
        except MalformedError as exc:
            vector["instance-identity"] = ClaimAppraisal(Tier.CONTRAINDICATED, (exc.code,))
            return self._result(policy, vector, Tier.CONTRAINDICATED, (exc.code,), None, now)
        vector["instance-identity"] = _AFFIRMED
        release = self._references.lookup(policy.model, evidence.claims.firmware_version)
        vector["executables"] = self._compare(release, measured, policy.executables, "executable")
        configuration = self._compare(release, measured, policy.configuration, "configuration")
        if configuration is _AFFIRMED and policy.configuration:
            config_stage = policy.configuration[-1]
            if not hmac.compare_digest(measured[config_stage], evidence.claims.privacy_config_hash):
                configuration = ClaimAppraisal(Tier.CONTRAINDICATED, ("privacy_config_hash_mismatch",))
        vector["configuration"] = configuration
        vector["hardware"] = self._hardware(evidence, policy)
        status, reasons = self._weigh(policy, vector)
        return self._result(policy, vector, status, reasons, evidence, now)

    # -- steps -----------------------------------------------------------------

    @staticmethod
    def _check_signature(evidence: Evidence, ak: AttestationKey) -> QuoteInfo | None:
        """The token's one signature; for quote-signed TPM evidence, the quote it is (ADR 0813)."""
        if evidence.algorithm != TPM_QUOTE_ALGORITHM:
            if ak.algorithm is _ES256:
                # A TPM AK signs anything not starting with TPM_GENERATED_VALUE through TPM2_Sign, so a
                # token it signed that way (a software-style quote, say) proves nothing about the PCRs.
                raise _Refused("instance-identity", "evidence_not_quote_signed")
            try:
                verify_signature(ak, evidence.algorithm, evidence.to_be_signed, evidence.signature)
            except IntegrityError as exc:
                raise _Refused("instance-identity", exc.code) from None
            return None
        try:
            verify_signature(ak, _ES256_NAME, evidence.signed_attest, evidence.signature)
        except IntegrityError as exc:
            raise _Refused("instance-identity", exc.code) from None
        try:
            # TPM_GENERATED_VALUE and TPM_ST_ATTEST_QUOTE: only the TPM's TPM2_Quote makes this structure.
            quote = parse_quote(_TPM2_QUOTE, evidence.signed_attest)
        except MalformedError as exc:
            raise _Refused("instance-identity", exc.code) from None
        if not hmac.compare_digest(quote.nonce, hashlib.sha256(evidence.to_be_signed).digest()):
            raise _Refused("instance-identity", "quote_not_bound_to_evidence")
        return quote

    def _authenticate(
        self,
        evidence: Evidence,
        signed_quote: QuoteInfo | None,
        ak: AttestationKey,
        nonce: bytes,
        policy: ModelPolicy,
        now: datetime,
    ) -> QuoteInfo:
        claims = evidence.claims
        if claims.ueid != _ueid(ak.public_key):
            raise _Refused("instance-identity", "ueid_mismatch")
        if not hmac.compare_digest(claims.nonce, nonce):
            raise _Refused("instance-identity", "nonce_mismatch")
        # Whole seconds on the wire: compared as POSIX seconds, no datetime arithmetic per appraisal.
        at = now.timestamp()
        if claims.issued_at > at + policy.max_clock_skew_seconds:
            raise _Refused("instance-identity", "issued_in_future")
        if at - claims.issued_at > policy.max_age_seconds:
            raise _Refused("instance-identity", "stale")
        tpm = claims.keystore_kind == "tpm2"
        expected_format = _TPM2_QUOTE if tpm else _SOFTWARE_QUOTE
        if claims.quote_format != expected_format or tpm != (signed_quote is not None):
            raise _Refused("hardware", "quote_format_mismatch")
        if claims.quote_signature:
            raise _Refused("hardware", "quote_signature_unexpected")
        if signed_quote is not None:
            # The quote is the token's signature; its qualifying data binds the Sig_structure,
            # whose nonce claim was checked above: that is the quote's freshness.
            if claims.quote_attest:
                raise _Refused("hardware", "quote_signature_unexpected")
            quote = signed_quote
        else:
            try:
                quote = parse_quote(claims.quote_format, claims.quote_attest)
            except MalformedError as exc:
                raise _Refused("hardware", exc.code) from None
            if not hmac.compare_digest(quote.nonce, nonce):
                raise _Refused("instance-identity", "quote_nonce_mismatch")
        if quote.pcr_selection != claims.pcr_selection or quote.pcr_selection != policy.pcr_selection:
            raise _Refused("executables", "pcr_selection_mismatch")
        return quote

    @staticmethod
    def _replay(evidence: Evidence, quote: QuoteInfo, policy: ModelPolicy) -> Mapping[str, bytes]:
        if not hmac.compare_digest(evidence.event_log_sha256, evidence.claims.event_log_digest):
            raise _Refused("executables", "event_log_digest_mismatch")
        # The quote's selection is the policy's (checked in _authenticate): the replay depends on the log
        # and the policy's stages only, and is computed once per distinct pair.
        replay = _replay_of(evidence, policy)
        if replay.refusal:
            raise _Refused("executables", replay.refusal)
        if not hmac.compare_digest(replay.pcr_digest, quote.pcr_digest):
            raise _Refused("executables", "event_log_replay_mismatch")
        if not replay.complete:
            raise _Refused("executables", "stage_not_measured")
        return replay.measured

    @staticmethod
    def _compare(
        release: ReferenceRelease | None,
        measured: Mapping[str, bytes],
        stages: tuple[str, ...],
        what: str,
    ) -> ClaimAppraisal:
        if not stages:
            return _NOT_APPRAISED
        if release is None:
            return ClaimAppraisal(Tier.CONTRAINDICATED, ("unknown_firmware_version",))
        expected = release.measurements
        for stage in stages:
            if not hmac.compare_digest(expected.get(stage, b""), measured[stage]):
                break
        else:
            return _AFFIRMED
        reasons = tuple(
            f"{what}_mismatch:{stage}"
            for stage in stages
            if not hmac.compare_digest(expected.get(stage, b""), measured[stage])
        )
        return ClaimAppraisal(Tier.CONTRAINDICATED, reasons)

    @staticmethod
    def _hardware(evidence: Evidence, policy: ModelPolicy) -> ClaimAppraisal:
        claims = evidence.claims
        if claims.keystore_tamper:
            return ClaimAppraisal(Tier.CONTRAINDICATED, ("keystore_tampered",))
        if claims.keystore_kind in policy.hardware_affirming:
            return _AFFIRMED
        if claims.keystore_kind in policy.hardware_warning:
            return ClaimAppraisal(Tier.WARNING, (f"keystore_{claims.keystore_kind}",))
        return ClaimAppraisal(Tier.CONTRAINDICATED, ("keystore_not_allowed",))

    @staticmethod
    def _weigh(policy: ModelPolicy, vector: Mapping[str, ClaimAppraisal]) -> tuple[Tier, tuple[str, ...]]:
        for claim in policy.weighed_claims:
            if vector[claim] is not _AFFIRMED:
                break
        else:
            # Every claim that counts is affirming without a reason: so is the whole.
            return _AFFIRMING, ()
        status = _AFFIRMING
        reasons: list[str] = []
        for claim, weight in policy.claims.items():
            appraisal = vector[claim]
            if weight is _IGNORED:
                continue
            reasons.extend(appraisal.reasons)
            tier = appraisal.tier
            if weight is _ADVISORY and tier is _CONTRAINDICATED:
                tier = _WARNING
            if weight is _REQUIRED and tier is _NONE:
                tier = _WARNING
                reasons.append(f"{claim}_not_appraised")
            if _RANK[tier] > _RANK[status]:
                status = tier
        return status, tuple(reasons)

    @staticmethod
    def _result(
        policy: ModelPolicy,
        vector: Mapping[str, ClaimAppraisal],
        status: Tier,
        reasons: tuple[str, ...],
        evidence: Evidence | None,
        now: datetime,
    ) -> AttestationResult:
        claims = evidence.claims if evidence is not None else None
        return AttestationResult(
            status=status,
            trustworthiness_vector=vector,
            reasons=reasons,
            model=policy.model,
            appraised_at=now,
            evidence_issued_at=utc(claims.issued_at) if claims is not None else None,
            firmware_version=claims.firmware_version if claims is not None else "",
            keystore_kind=claims.keystore_kind if claims is not None else "",
            policy=policy.claims,
        )
