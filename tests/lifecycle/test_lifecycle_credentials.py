"""Bootstrap token, credential audit, renewal, end of support, decommissioning."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select

from iotguard.errors import AuthenticationError, UnknownDeviceError
from iotguard.hub.credentials import (
    CredentialPolicy,
    bootstrap_tokens,
    certificates_due_for_renewal,
    credential_audit,
    ensure_bootstrap,
    record_use,
    redeem_bootstrap,
    set_end_of_support,
    support_warnings,
)
from iotguard.hub.mosquitto import revoked_serials
from iotguard.hub.schema import enrollment_tokens, key_epochs
from iotguard.hub.store import HubStore
from iotguard.identity.ca import FleetCA
from tests.lifecycle.conftest import NOW, register_device

# -- bootstrap -----------------------------------------------------------------


def test_bootstrap_is_issued_once_and_redeemed_once(store: HubStore) -> None:
    secret = ensure_bootstrap(store, NOW)
    assert secret is not None and secret.startswith("igb_")
    assert ensure_bootstrap(store, NOW + timedelta(minutes=1)) is None  # second hub start prints nothing
    token = redeem_bootstrap(store, secret, "first-admin", NOW + timedelta(minutes=5))
    assert store.authenticate_api_token(token).role == "security-admin"
    with pytest.raises(AuthenticationError):
        redeem_bootstrap(store, secret, "again", NOW + timedelta(minutes=6))
    assert ensure_bootstrap(store, NOW + timedelta(days=30)) is None


def test_bootstrap_only_stores_a_hash(store: HubStore) -> None:
    secret = ensure_bootstrap(store, NOW)
    assert secret is not None
    with store.engine.connect() as c:
        row = c.execute(select(bootstrap_tokens)).one()
    stored = b"".join(bytes(v) if isinstance(v, bytes) else str(v).encode() for v in row)
    assert secret.encode() not in stored
    assert secret.split("_", 1)[1].encode() not in stored
    assert len(row.token_hash) == 32


def test_no_bootstrap_when_operator_tokens_exist(store: HubStore) -> None:
    store.create_api_token("ops", "operator", now=NOW)
    assert ensure_bootstrap(store, NOW) is None


def test_no_bootstrap_when_all_tokens_were_revoked(store: HubStore) -> None:
    """Check a hub whose operators all left does not reopen the bootstrap door."""
    token = store.create_api_token("ops", "operator", now=NOW)
    store.revoke_api_token(token.split("_")[1], now=NOW)
    assert ensure_bootstrap(store, NOW) is None


def test_bootstrap_guessing_fails(store: HubStore) -> None:
    """Check for default-credential guessing against the bootstrap endpoint."""
    assert ensure_bootstrap(store, NOW) is not None
    for guess in ["igb_admin", "igb_", "admin", "igb_" + "A" * 43, "igb_changeme"]:
        with pytest.raises(AuthenticationError):
            redeem_bootstrap(store, guess, "x", NOW)
    assert store.list_api_tokens() == []


def test_expired_bootstrap_is_refused_then_replaced(store: HubStore) -> None:
    old = ensure_bootstrap(store, NOW, ttl=timedelta(hours=1))
    assert old is not None
    later = NOW + timedelta(hours=2)
    with pytest.raises(AuthenticationError):
        redeem_bootstrap(store, old, "admin", later)
    new = ensure_bootstrap(store, later)
    assert new is not None and new != old
    redeem_bootstrap(store, new, "admin", later)


def test_bootstrap_burnt_if_tokens_appeared_meanwhile(store: HubStore) -> None:
    secret = ensure_bootstrap(store, NOW)
    assert secret is not None
    store.create_api_token("cli-made", "viewer", now=NOW)
    with pytest.raises(AuthenticationError):
        redeem_bootstrap(store, secret, "admin", NOW)
    assert [t["role"] for t in store.list_api_tokens()] == ["viewer"]


# -- credential audit ------------------------------------------------------------


def _reasons(findings: list) -> set[tuple[str, str, str]]:
    return {(f.credential, f.category, f.reason) for f in findings}


def test_audit_finds_cloned_device_key(store: HubStore, ca: FleetCA) -> None:
    """Check for a cloned device: two registry entries share one identity key."""
    pub = bytes(range(32))
    register_device(store, ca, "cam-1", public_key=pub)
    register_device(store, ca, "cam-2", public_key=pub)
    register_device(store, ca, "cam-3")
    found = _reasons(credential_audit(store, NOW))
    assert ("cam-1", "shared", "shared_public_key") in found
    assert ("cam-2", "shared", "shared_public_key") in found
    assert not any(c == "cam-3" for c, _, _ in found)


def test_audit_finds_weak_expired_and_unused(store: HubStore, ca: FleetCA) -> None:
    register_device(store, ca, "long-lived", validity=timedelta(days=3650))
    register_device(store, ca, "expired", validity=timedelta(days=1))
    store.create_device("never-enrolled", "thermo-1", "plant1", serial=None, now=NOW,
                        token_hash=hashlib.sha256(b"x").digest(), token_expires_at=NOW + timedelta(hours=1))
    idle = store.create_api_token("idle", "operator", now=NOW).split("_")[1]
    busy = store.create_api_token("busy", "operator", now=NOW).split("_")[1]
    stale = store.create_api_token("stale", "viewer", now=NOW).split("_")[1]
    dup1 = store.create_api_token("shared-ci", "viewer", now=NOW).split("_")[1]
    dup2 = store.create_api_token("shared-ci", "viewer", now=NOW).split("_")[1]
    now = NOW + timedelta(days=40)
    record_use(store, busy, now - timedelta(hours=1))
    record_use(store, stale, NOW + timedelta(days=2))
    for t in (dup1, dup2):
        record_use(store, t, now)
    found = _reasons(credential_audit(store, now, unused_after=timedelta(days=30),
                                      weak_check=CredentialPolicy(max_certificate_validity=timedelta(days=90))))
    assert ("long-lived", "weak", "validity_too_long") in found
    assert ("expired", "expired", "certificate_expired") in found
    assert (hashlib.sha256(b"x").digest()[:6].hex(), "expired", "enrollment_token_expired") in found
    assert (idle, "unused", "never_used") in found
    assert (stale, "unused", "unused") in found
    assert {(dup1, "shared", "shared_token_name"), (dup2, "shared", "shared_token_name")} <= found
    assert not any(c == busy for c, _, _ in found)
    later = _reasons(credential_audit(store, NOW + timedelta(days=200)))
    assert (busy, "weak", "not_rotated") in later


def test_audit_orders_high_first_and_never_leaks_secrets(store: HubStore, ca: FleetCA) -> None:
    secret = store.create_api_token("ops", "operator", now=NOW)
    register_device(store, ca, "expired", validity=timedelta(days=1))
    findings = credential_audit(store, NOW + timedelta(days=60))
    assert findings[0].severity == "high"
    assert all(secret not in str(f.to_dict()) for f in findings)


def test_record_use_is_throttled(store: HubStore) -> None:
    from iotguard.hub.credentials import credential_usage

    tid = store.create_api_token("ops", "operator", now=NOW).split("_")[1]
    record_use(store, tid, NOW)
    record_use(store, tid, NOW + timedelta(seconds=10))
    record_use(store, tid, NOW + timedelta(minutes=2))
    with store.engine.connect() as c:
        row = c.execute(select(credential_usage)).one()
    assert row.last_used_at.replace(tzinfo=None) == (NOW + timedelta(minutes=2)).replace(tzinfo=None)


# -- renewal and end of support ------------------------------------------------------


def test_renewal_selects_active_certificates_expiring_soon(store: HubStore, ca: FleetCA) -> None:
    register_device(store, ca, "soon", validity=timedelta(days=5))
    register_device(store, ca, "sooner", validity=timedelta(days=2))
    register_device(store, ca, "later", validity=timedelta(days=60))
    register_device(store, ca, "revoked", validity=timedelta(days=1))
    store.revoke_device("revoked", now=NOW)
    due = certificates_due_for_renewal(store, NOW, timedelta(days=7))
    assert [d.device_id for d in due] == ["sooner", "soon"]
    assert certificates_due_for_renewal(store, NOW, timedelta(0)) == []


def test_end_of_support_warnings(store: HubStore, ca: FleetCA) -> None:
    register_device(store, ca, "old-1", model="thermo-1")
    register_device(store, ca, "old-2", model="thermo-1")
    register_device(store, ca, "new-1", model="thermo-2")
    register_device(store, ca, "gone", model="cam-0")
    store.decommission("gone", now=NOW)
    set_end_of_support(store, "thermo-1", NOW + timedelta(days=20))
    set_end_of_support(store, "thermo-2", NOW + timedelta(days=400))
    set_end_of_support(store, "cam-0", NOW - timedelta(days=1))
    warnings = support_warnings(store, NOW, timedelta(days=30))
    assert [(w.model, w.ended, w.devices) for w in warnings] == [("thermo-1", False, ("old-1", "old-2"))]
    later = support_warnings(store, NOW + timedelta(days=21), timedelta(days=30))
    assert [(w.model, w.ended) for w in later] == [("thermo-1", True)]
    set_end_of_support(store, "thermo-1", NOW + timedelta(days=365))  # the maker extended support
    assert support_warnings(store, NOW, timedelta(days=30)) == []


# -- decommissioning -------------------------------------------------------------


def test_decommission_crypto_erases_session_keys(store: HubStore, ca: FleetCA) -> None:
    cert = register_device(store, ca, "dev-1")
    store.add_epoch("dev-1", 2, "chacha20-poly1305", b"\x02" * 48, now=NOW)
    store.new_enrollment_token("dev-1", hashlib.sha256(b"spare").digest(), NOW + timedelta(days=1))
    register_device(store, ca, "dev-2")
    result = store.decommission("dev-1", now=NOW)
    assert result.erased_epochs == (1, 2)
    assert store.epoch_key("dev-1", 1) is None and store.epoch_key("dev-1", 2) is None
    assert store.epoch_key("dev-2", 1) is not None
    with store.engine.connect() as c:
        assert c.execute(select(key_epochs).where(key_epochs.c.device_id == "dev-1")).first() is None
        assert c.execute(select(enrollment_tokens).where(
            enrollment_tokens.c.device_id == "dev-1", enrollment_tokens.c.used_at.is_(None))).first() is None
    d = store.get_device("dev-1")
    assert d.status == "decommissioned" and d.current_epoch is None
    assert (cert.serial_number, NOW) in [(s, t) for s, t in revoked_serials(store)]


def test_decommissioned_wrapped_key_is_gone_from_the_database_file(tmp_path, ca: FleetCA) -> None:
    store = HubStore.open(f"sqlite:///{tmp_path / 'erase.db'}")
    register_device(store, ca, "dev-1")
    marker = b"WRAPPED-KEY-MARKER-" * 3
    store.add_epoch("dev-1", 2, "chacha20-poly1305", marker, now=NOW)
    store.decommission("dev-1", now=NOW)
    store.engine.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("erase.db*"))
    assert marker not in raw


def test_decommission_unknown_device(store: HubStore) -> None:
    with pytest.raises(UnknownDeviceError):
        store.decommission("nope", now=NOW)
