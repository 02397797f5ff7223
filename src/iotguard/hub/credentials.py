"""Credential lifecycle on the hub: bootstrap, usage, audit, renewal, end of support, decommissioning.

- **Bootstrap.** There is no default operator account. At first start the
  hub calls :func:`ensure_bootstrap`, prints the one-time secret it returns,
  and the first operator exchanges it once, through :func:`redeem_bootstrap`,
  for a ``security-admin`` API token. Only a hash of the secret is stored.
- **Usage.** :func:`record_use` keeps each API token's last use, so unused
  tokens can be found and retired.
- **Audit.** :func:`credential_audit` lists credentials that are shared,
  weak, expired or unused, as :class:`CredentialFinding` data.
- **Renewal and end of support.** :func:`certificates_due_for_renewal`,
  :func:`set_end_of_support`, :func:`support_warnings`.

The records live behind :class:`~iotguard.hub.stores.credentials.CredentialStore`
(SQL tables from migration ``0400_credentials``, or in memory); every function
takes the hub store, or a :class:`CredentialStores` of the three stores it reads.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509

from iotguard.errors import AuthenticationError, ConfigError, MalformedError
from iotguard.hub.stores.credentials import (
    CredentialStore,
    bootstrap_tokens,
    create_credential_tables,
    credential_usage,
    model_support,
)
from iotguard.hub.stores.devices import DeviceRecord, DeviceStore
from iotguard.hub.stores.tokens import OperatorTokenStore

__all__ = [
    "BOOTSTRAP_ROLE",
    "BOOTSTRAP_TTL",
    "CredentialFinding",
    "CredentialPolicy",
    "CredentialStores",
    "SupportWarning",
    "bootstrap_tokens",
    "certificates_due_for_renewal",
    "create_credential_tables",
    "credential_audit",
    "credential_usage",
    "ensure_bootstrap",
    "model_support",
    "record_use",
    "redeem_bootstrap",
    "set_end_of_support",
    "support_warnings",
]

#: Role of the API token a bootstrap secret is exchanged for.
BOOTSTRAP_ROLE = "security-admin"
#: How long a bootstrap secret can be redeemed.
BOOTSTRAP_TTL = timedelta(hours=24)
#: ``record_use`` writes at most once per token per this interval.
USE_RECORD_INTERVAL = timedelta(minutes=1)
_PAGE = 1000


@dataclass(frozen=True)
class CredentialStores:
    """The three stores credential checks read: devices, operator tokens, credential records."""

    devices: DeviceStore
    tokens: OperatorTokenStore
    records: CredentialStore


class _HubLike(DeviceStore, OperatorTokenStore, CredentialStore, Protocol):
    """What :class:`iotguard.hub.store.HubStore` is: all three on one engine (typing only)."""


def _stores(store: _HubLike | CredentialStores) -> CredentialStores:
    return store if isinstance(store, CredentialStores) else CredentialStores(store, store, store)


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(f"{name} must be a timezone-aware UTC datetime")


def _bootstrap_digest(secret: str) -> bytes:
    return hashlib.sha256(b"iotguard-bootstrap-v1\x00" + secret.encode()).digest()


# -- bootstrap ---------------------------------------------------------------


def ensure_bootstrap(store: _HubLike | CredentialStores, now: datetime, *,
                     ttl: timedelta = BOOTSTRAP_TTL) -> str | None:
    """Issue the one-time bootstrap secret if the hub has no operator yet.

    Returns a fresh secret only when no API token exists (revoked ones
    count: the hub had operators) and no bootstrap secret is pending. A
    secret that expired unredeemed is replaced. The caller prints it once;
    only its hash is stored.

    Args:
        store: The hub store (or its :class:`CredentialStores`).
        now: Issue time.
        ttl: How long the secret can be redeemed (at most 7 days).

    Returns:
        The secret, or None when there is nothing to bootstrap.

    Raises:
        ConfigError: naive ``now`` or a ttl outside (0, 7 days].
    """
    _require_aware("now", now)
    if not timedelta(0) < ttl <= timedelta(days=7):
        raise ConfigError("bootstrap ttl must be in (0, 7 days]")
    s = _stores(store)
    if s.tokens.list_api_tokens():
        return None
    secret = f"igb_{secrets.token_urlsafe(32)}"
    return secret if s.records.issue_bootstrap(_bootstrap_digest(secret), now, now + ttl) else None


def redeem_bootstrap(store: _HubLike | CredentialStores, secret: str, name: str, now: datetime) -> str:
    """Exchange the bootstrap secret, once, for the first ``security-admin`` API token.

    Args:
        store: The hub store (or its :class:`CredentialStores`).
        secret: The secret :func:`ensure_bootstrap` returned.
        name: Name of the new operator token (1-128 characters).
        now: Redemption time.

    Returns:
        The new API token secret (shown once).

    Raises:
        AuthenticationError: unknown, malformed, expired or already redeemed
            secret, or the hub already has API tokens (the secret is then burnt).
        MalformedError: the name (from the API caller) is not 1-128 printable characters.
        ConfigError: naive ``now``.
    """
    _require_aware("now", now)
    if not 1 <= len(name) <= 128 or not name.isprintable():
        raise MalformedError("token name must be 1-128 printable characters")
    if not secret.startswith("igb_") or len(secret) > 128:
        raise AuthenticationError("malformed bootstrap token")
    s = _stores(store)
    if not s.records.consume_bootstrap(_bootstrap_digest(secret), now):
        raise AuthenticationError("invalid, expired or used bootstrap token")
    if s.tokens.list_api_tokens():
        raise AuthenticationError("the hub already has operators; bootstrap token burnt")
    token = s.tokens.create_api_token(name, BOOTSTRAP_ROLE, now=now)
    s.records.bind_bootstrap(token.split("_", 2)[1])
    return token


# -- usage -------------------------------------------------------------------


def record_use(store: _HubLike | CredentialStores, token_id: str, now: datetime, *,
               min_interval: timedelta = USE_RECORD_INTERVAL) -> None:
    """Record that API token ``token_id`` authenticated a request at ``now``.

    Writes at most once per ``min_interval`` per token, so calling it on
    every request costs one cheap conditional upsert.
    """
    _stores(store).records.record_use(token_id, now, min_interval)


# -- audit -------------------------------------------------------------------


@dataclass(frozen=True)
class CredentialPolicy:
    """What counts as a weak credential.

    Attributes:
        max_certificate_validity: Longest acceptable device certificate validity.
        max_token_age: API tokens older than this were never rotated.
    """

    max_certificate_validity: timedelta = timedelta(days=90)
    max_token_age: timedelta = timedelta(days=90)


@dataclass(frozen=True)
class CredentialFinding:
    """One credential that needs attention (a result, not a failure).

    Attributes:
        kind: ``device_certificate``, ``device_key``, ``api_token``,
            ``enrollment_token`` or ``bootstrap_token``.
        credential: Device id, token id, or an enrollment token's hash prefix.
        category: ``shared``, ``weak``, ``expired`` or ``unused``.
        reason: Stable reason code.
        severity: ``high``, ``medium`` or ``low``.
        detail: Human-readable explanation (never a secret).
    """

    kind: str
    credential: str
    category: str
    reason: str
    severity: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly view."""
        return {"kind": self.kind, "credential": self.credential, "category": self.category,
                "reason": self.reason, "severity": self.severity, "detail": self.detail}


def _all_devices(devices: DeviceStore, status: str | None = None) -> list[DeviceRecord]:
    out: list[DeviceRecord] = []
    while True:
        page = devices.list_devices(status=status, limit=_PAGE, offset=len(out))
        out += page
        if len(page) < _PAGE:
            return out


def _certificate_validity(d: DeviceRecord) -> timedelta | None:
    if d.cert_pem:
        try:
            cert = x509.load_pem_x509_certificate(d.cert_pem.encode())
        except ValueError:
            return None
        return cert.not_valid_after_utc - cert.not_valid_before_utc
    if d.cert_not_after is not None and d.enrolled_at is not None:
        return d.cert_not_after - d.enrolled_at
    return None


def _device_findings(devices: DeviceStore, now: datetime, policy: CredentialPolicy) -> list[CredentialFinding]:
    out: list[CredentialFinding] = []
    live = [d for d in _all_devices(devices) if d.status in ("pending", "active")]
    by_key: dict[bytes, list[str]] = defaultdict(list)
    by_serial: dict[str, list[str]] = defaultdict(list)
    for d in live:
        if d.identity_public_key:
            by_key[bytes(d.identity_public_key)].append(d.device_id)
        if d.cert_serial:
            by_serial[d.cert_serial].append(d.device_id)
    for kind, reason, groups in (("device_key", "shared_public_key", by_key),
                                 ("device_certificate", "shared_certificate_serial", by_serial)):
        for ids in groups.values():
            if len(ids) > 1:
                out += [CredentialFinding(kind, i, "shared", reason, "high",
                                          f"same credential as {', '.join(x for x in ids if x != i)}")
                        for i in ids]
    for d in live:
        if d.status != "active":
            continue
        if d.cert_not_after is not None and d.cert_not_after <= now:
            out.append(CredentialFinding("device_certificate", d.device_id, "expired", "certificate_expired",
                                         "high", f"certificate expired {d.cert_not_after.isoformat()}"))
        validity = _certificate_validity(d)
        if validity is not None and validity > policy.max_certificate_validity:
            out.append(CredentialFinding("device_certificate", d.device_id, "weak", "validity_too_long", "medium",
                                         f"certificate valid {validity.days} days "
                                         f"(policy {policy.max_certificate_validity.days})"))
    return out


def _token_findings(s: CredentialStores, now: datetime, unused_after: timedelta,
                    policy: CredentialPolicy) -> list[CredentialFinding]:
    out: list[CredentialFinding] = []
    uses = s.records.last_uses()
    live = sorted((t for t in s.tokens.list_api_tokens() if not t["revoked"]), key=lambda t: str(t["token_id"]))
    by_name: dict[str, list[str]] = defaultdict(list)
    for t in live:
        token_id = str(t["token_id"])
        by_name[str(t["name"])].append(token_id)
        created = datetime.fromisoformat(str(t["created_at"]))
        if now - created > policy.max_token_age:
            out.append(CredentialFinding("api_token", token_id, "weak", "not_rotated", "medium",
                                         f"created {created.date().isoformat()}, never rotated"))
        last = uses.get(token_id)
        if last is None:
            if now - created > unused_after:
                out.append(CredentialFinding("api_token", token_id, "unused", "never_used", "medium",
                                             f"never used since {created.date().isoformat()}"))
        elif now - last > unused_after:
            out.append(CredentialFinding("api_token", token_id, "unused", "unused", "low",
                                         f"last used {last.date().isoformat()}"))
    for name, ids in by_name.items():
        if len(ids) > 1:
            out += [CredentialFinding("api_token", i, "shared", "shared_token_name", "medium",
                                      f"{len(ids)} live tokens named {name!r}") for i in ids]
    for token_hash, device_id in s.devices.expired_enrollment_tokens(now):
        out.append(CredentialFinding("enrollment_token", token_hash[:6].hex(), "expired",
                                     "enrollment_token_expired", "low",
                                     f"unused enrollment token for {device_id} expired"))
    if s.records.bootstrap_expired_unredeemed(now):
        out.append(CredentialFinding("bootstrap_token", "bootstrap", "expired", "bootstrap_token_expired", "low",
                                     "the bootstrap token expired unredeemed"))
    return out


def credential_audit(
    store: _HubLike | CredentialStores,
    now: datetime,
    *,
    unused_after: timedelta = timedelta(days=30),
    weak_check: CredentialPolicy | None = None,
) -> list[CredentialFinding]:
    """List credentials that are shared, weak, expired or unused.

    - shared: one identity public key or certificate serial on two live
      devices (a cloned device), or several live API tokens with one name
      (one credential passed around, renamed copies of it);
    - weak: device certificates valid longer than the policy; API tokens
      older than ``max_token_age`` (never rotated);
    - expired: an active device whose certificate has expired; unused
      enrollment tokens past expiry; an unredeemed, expired bootstrap token;
    - unused: live API tokens not used for ``unused_after`` (or never).

    Args:
        store: The hub store (or its :class:`CredentialStores`).
        now: Audit time.
        unused_after: Idle period after which a token is reported unused.
        weak_check: Thresholds for weak credentials (default :class:`CredentialPolicy`).

    Returns:
        Findings ordered by severity (high first), then kind and credential.

    Raises:
        ConfigError: naive ``now`` or a non-positive ``unused_after``.
    """
    _require_aware("now", now)
    if unused_after <= timedelta(0):
        raise ConfigError("unused_after must be positive")
    policy = weak_check or CredentialPolicy()
    s = _stores(store)
    findings = _device_findings(s.devices, now, policy) + _token_findings(s, now, unused_after, policy)
    rank = {"high": 0, "medium": 1, "low": 2}
    return sorted(findings, key=lambda f: (rank[f.severity], f.kind, f.credential, f.reason))


# -- renewal and end of support ----------------------------------------------


def certificates_due_for_renewal(store: _HubLike | CredentialStores, now: datetime,
                                 before: timedelta) -> list[DeviceRecord]:
    """Active devices whose certificate expires within ``before`` (or already has), soonest first.

    Raises:
        ConfigError: naive ``now`` or a negative ``before``.
    """
    _require_aware("now", now)
    if before < timedelta(0):
        raise ConfigError("before must not be negative")
    due = [d for d in _all_devices(_stores(store).devices, "active")
           if d.cert_not_after is not None and d.cert_not_after <= now + before]
    return sorted(due, key=lambda d: (d.cert_not_after or now, d.device_id))


def set_end_of_support(store: _HubLike | CredentialStores, model: str, end_of_support: datetime) -> None:
    """Set (or move) the end-of-support date of a device model.

    Raises:
        ConfigError: empty or over-long model, or a naive datetime.
    """
    if not 1 <= len(model) <= 64:
        raise ConfigError("model must be 1-64 characters")
    _require_aware("end_of_support", end_of_support)
    _stores(store).records.set_end_of_support(model, end_of_support)


@dataclass(frozen=True)
class SupportWarning:
    """A model whose support has ended or ends soon, with its live devices.

    Attributes:
        model: Device model.
        end_of_support: When support ends.
        ended: Support has already ended.
        devices: Ids of pending or active devices of this model.
    """

    model: str
    end_of_support: datetime
    ended: bool
    devices: tuple[str, ...]


def support_warnings(store: _HubLike | CredentialStores, now: datetime,
                     warn_before: timedelta) -> list[SupportWarning]:
    """Models with live devices whose end of support is past or within ``warn_before``.

    Raises:
        ConfigError: naive ``now`` or a negative ``warn_before``.
    """
    _require_aware("now", now)
    if warn_before < timedelta(0):
        raise ConfigError("warn_before must not be negative")
    s = _stores(store)
    models = s.records.end_of_support(until=now + warn_before)
    if not models:
        return []
    live: dict[str, list[str]] = defaultdict(list)
    for d in _all_devices(s.devices):
        if d.model in models and d.status in ("pending", "active"):
            live[d.model].append(d.device_id)
    return sorted((SupportWarning(m, eos, eos <= now, tuple(sorted(live[m]))) for m, eos in models.items()
                   if live[m]), key=lambda w: (w.end_of_support, w.model))
