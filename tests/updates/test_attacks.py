"""Attacks from the TUF specification (section 1.5.2), each against the real client.

Every test serves the device what an attacker on the network, or one holding
a stolen key, could serve, and checks that ``tuf.ngclient`` plus the device's
own checks refuse it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import (
    BadVersionNumberError,
    DownloadLengthMismatchError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    UnsignedMetadataError,
)
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp

from iotguard.errors import ConfigError, RollbackError, UpdateRefused
from iotguard.keys.keystore import KeyKind
from iotguard.updates import FirmwareRelease, KeyStoreSigner
from tests.updates.conftest import MODEL, OTHER_MODEL, Fleet, build_fleet, image


def _latest(fleet: Fleet, role: str) -> Metadata[Targets]:
    names = [n for n in fleet.served if n.startswith("metadata/") and n.endswith(f".{role}.json")]
    newest = max(names, key=lambda n: int(n.split("/")[1].split(".")[0]))
    return Metadata[Targets].from_bytes(fleet.served[newest])


def _serve_role(fleet: Fleet, role: str, md: Metadata[Targets], signers: list[Signer], online: Signer) -> None:
    """Serve ``md`` as the newest ``role`` with a matching snapshot and timestamp signed by ``online``."""
    md.signed.version += 1
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    fleet.overrides[f"metadata/{md.signed.version}.{role}.json"] = md.to_bytes()
    snapshot = Metadata[Snapshot].from_bytes(fleet.served[_newest_snapshot(fleet)])
    snapshot.signed.meta[f"{role}.json"] = MetaFile(md.signed.version)
    snapshot.signed.version += 1
    snapshot.signatures.clear()
    snapshot.sign(online)
    fleet.overrides[f"metadata/{snapshot.signed.version}.snapshot.json"] = snapshot.to_bytes()
    timestamp = Metadata[Timestamp].from_bytes(fleet.served["metadata/timestamp.json"])
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
    timestamp.signatures.clear()
    timestamp.sign(online)
    fleet.overrides["metadata/timestamp.json"] = timestamp.to_bytes()


def _newest_snapshot(fleet: Fleet) -> str:
    names = [n for n in fleet.served if n.endswith(".snapshot.json")]
    return max(names, key=lambda n: int(n.split("/")[1].split(".")[0]))


def _evil_target(path: str, data: bytes) -> TargetFile:
    return TargetFile(len(data), {"sha256": hashlib.sha256(data).hexdigest()}, path, unrecognized_fields={
        "custom": FirmwareRelease.for_image(
            path.split("/")[0], int(path.rsplit("-", 1)[1].split(".")[0]), data,
            end_of_support=datetime(2030, 1, 1, tzinfo=UTC).date(), disclosure_contact="evil@example.org",
        ).custom(),
    })


def _cause(exc: pytest.ExceptionInfo[BaseException]) -> BaseException | None:
    return exc.value.__cause__


def test_arbitrary_software_attack_image_swapped_in_transit(fleet: Fleet, tmp_path: Path) -> None:
    release = fleet.publish(MODEL, 2)
    evil = b"X" * release.image_length
    fleet.overrides[f"targets/{MODEL}/{release.image_sha256}.{MODEL}-2.img"] = evil
    device = fleet.device(tmp_path / "dev")
    with pytest.raises(UpdateRefused) as exc:
        device.install(2)
    assert isinstance(_cause(exc), LengthOrHashMismatchError)
    assert device.slots.boot().image.version == 1


def test_arbitrary_software_attack_role_signed_by_attacker_key(fleet: Fleet, tmp_path: Path) -> None:
    device = fleet.device(tmp_path / "dev")
    attacker = CryptoSigner.generate_ed25519()
    md = _latest(fleet, MODEL)
    evil = image(MODEL, 9)
    md.signed.targets[f"{MODEL}/{MODEL}-9.img"] = _evil_target(f"{MODEL}/{MODEL}-9.img", evil)
    _serve_role(fleet, MODEL, md, [attacker], fleet.online_signer)
    with pytest.raises(UpdateRefused) as exc:
        device.install(9)
    assert isinstance(_cause(exc), UnsignedMetadataError)


def test_rollback_attack_older_repository_state_replayed(tmp_path: Path) -> None:
    fleet = build_fleet(tmp_path)
    fleet.publish(MODEL, 2)
    old_state = dict(fleet.served)
    fleet.publish(MODEL, 3)
    device = fleet.device(tmp_path / "dev")
    device.install(3)
    fleet.publish(MODEL, 4)
    fleet.served = old_state  # the attacker answers with an older state than the device has seen
    with pytest.raises(UpdateRefused) as exc:
        device.install(4)
    assert isinstance(_cause(exc), BadVersionNumberError)


def test_indefinite_freeze_attack_expired_timestamp_refused(tmp_path: Path) -> None:
    fleet = build_fleet(tmp_path, now=datetime.now(tz=UTC) - timedelta(days=2))
    fleet.publish(MODEL, 2, now=datetime.now(tz=UTC) - timedelta(days=2))  # then the repository is frozen
    device = fleet.device(tmp_path / "dev")
    with pytest.raises(UpdateRefused) as exc:
        device.install(2)
    assert isinstance(_cause(exc), ExpiredMetadataError)


def test_endless_data_attack_on_timestamp(fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(MODEL, 2)
    fleet.overrides["metadata/timestamp.json"] = fleet.served["metadata/timestamp.json"] + b" " * (1 << 20)
    device = fleet.device(tmp_path / "dev")
    with pytest.raises(UpdateRefused) as exc:
        device.install(2)
    assert isinstance(_cause(exc), DownloadLengthMismatchError)


def test_endless_data_attack_on_image(fleet: Fleet, tmp_path: Path) -> None:
    release = fleet.publish(MODEL, 2)
    url = f"targets/{MODEL}/{release.image_sha256}.{MODEL}-2.img"
    fleet.overrides[url] = fleet.served[url] + b"\0" * (1 << 20)
    device = fleet.device(tmp_path / "dev")
    with pytest.raises(UpdateRefused) as exc:
        device.install(2)
    assert isinstance(_cause(exc), DownloadLengthMismatchError)
    assert device.slots.boot().image.version == 1


def test_mix_and_match_attack_old_model_role_under_new_snapshot(fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(MODEL, 2)
    newest = _latest(fleet, MODEL).signed.version
    fleet.overrides[f"metadata/{newest}.{MODEL}.json"] = fleet.served[f"metadata/{newest - 1}.{MODEL}.json"]
    device = fleet.device(tmp_path / "dev")
    with pytest.raises(UpdateRefused) as exc:
        device.install(2)
    assert isinstance(_cause(exc), BadVersionNumberError)


def test_fast_forward_attack_recovered_by_offline_root_rotating_online_key(fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(MODEL, 2)
    device = fleet.device(tmp_path / "dev")
    # A stolen online key signs a timestamp with a huge version: the device accepts it ...
    timestamp = Metadata[Timestamp].from_bytes(fleet.served["metadata/timestamp.json"])
    timestamp.signed.version = 10**6
    timestamp.signatures.clear()
    timestamp.sign(fleet.online_signer)
    fleet.overrides["metadata/timestamp.json"] = timestamp.to_bytes()
    device.fetch_release(2)
    fleet.overrides.clear()
    fleet.publish(MODEL, 3)
    # ... and from then on refuses every honest timestamp (the fast-forward) ...
    with pytest.raises(UpdateRefused) as exc:
        device.install(3)
    assert isinstance(_cause(exc), BadVersionNumberError)
    # ... until the offline root keys rotate the online key away.
    fleet.hub_keystore.generate("tuf-online-2", KeyKind.ED25519)
    fresh_online = KeyStoreSigner(fleet.hub_keystore, "tuf-online-2")
    fleet.repo.rotate_root(
        old_signers=fleet.root_signers[:2], new_signers=fleet.root_signers, new_threshold=2,
        now=datetime.now(tz=UTC), online_signer=fresh_online,
    )
    fleet.online_signer = fresh_online
    fleet.sync()
    assert device.install(3).version == 3


def test_compromised_online_key_rejected_after_root_rotation(fleet: Fleet, tmp_path: Path) -> None:
    device = fleet.device(tmp_path / "dev")
    stolen = fleet.online_signer
    fleet.hub_keystore.generate("tuf-online-2", KeyKind.ED25519)
    fleet.online_signer = KeyStoreSigner(fleet.hub_keystore, "tuf-online-2")
    fleet.repo.rotate_root(
        old_signers=fleet.root_signers[1:], new_signers=fleet.root_signers, new_threshold=2,
        now=datetime.now(tz=UTC), online_signer=fleet.online_signer,
    )
    fleet.publish(MODEL, 2)
    # The thief keeps signing timestamps with the revoked key: refused once the device has the new root.
    timestamp = Metadata[Timestamp].from_bytes(fleet.served["metadata/timestamp.json"])
    timestamp.signed.version += 100
    timestamp.signatures.clear()
    timestamp.sign(stolen)
    fleet.overrides["metadata/timestamp.json"] = timestamp.to_bytes()
    with pytest.raises(UpdateRefused) as exc:
        device.install(2)
    assert isinstance(_cause(exc), UnsignedMetadataError)


def test_root_rotation_needs_a_threshold_of_offline_keys(fleet: Fleet) -> None:
    with pytest.raises(ConfigError):
        fleet.repo.rotate_root(
            old_signers=fleet.root_signers[:1], new_signers=[CryptoSigner.generate_ed25519()], new_threshold=1,
            now=datetime.now(tz=UTC), online_signer=fleet.online_signer,
        )


def test_compromised_online_key_cannot_sign_software(fleet: Fleet, tmp_path: Path) -> None:
    device = fleet.device(tmp_path / "dev")
    md = _latest(fleet, MODEL)
    md.signed.targets[f"{MODEL}/{MODEL}-9.img"] = _evil_target(f"{MODEL}/{MODEL}-9.img", image(MODEL, 9))
    _serve_role(fleet, MODEL, md, [fleet.online_signer], fleet.online_signer)
    with pytest.raises(UpdateRefused) as exc:
        device.install(9)
    assert isinstance(_cause(exc), UnsignedMetadataError)


def test_release_for_another_model_is_not_trusted_for_this_model(fleet: Fleet, tmp_path: Path) -> None:
    # The camera release key (or a hub mistake) lists an image under the thermostat's path.
    md = _latest(fleet, OTHER_MODEL)
    md.signed.targets[f"{MODEL}/{MODEL}-9.img"] = _evil_target(f"{MODEL}/{MODEL}-9.img", image(OTHER_MODEL, 9))
    _serve_role(fleet, OTHER_MODEL, md, [fleet.model_signers[OTHER_MODEL]], fleet.online_signer)
    device = fleet.device(tmp_path / "dev")
    with pytest.raises(UpdateRefused) as exc:
        device.install(9)
    assert exc.value.code == "update_not_found"


def test_release_of_another_model_is_never_fetched(fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(OTHER_MODEL, 2)
    device = fleet.device(tmp_path / "dev")
    with pytest.raises(UpdateRefused) as exc:
        device.install(2)
    assert exc.value.code == "update_not_found"
    assert not any(p.startswith(f"targets/{OTHER_MODEL}/") for p in fleet.requested)


def test_downgrade_to_correctly_signed_older_release_refused_by_counter(fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(MODEL, 2)
    fleet.publish(MODEL, 3)
    device = fleet.device(tmp_path / "dev")
    assert device.install(3).version == 3
    with pytest.raises(RollbackError):
        device.install(2)
    # Even with the slot state wiped and factory firmware back, the key store's counter refuses it.
    for path in (tmp_path / "dev" / "firmware").glob("slot*"):
        path.unlink()
    device.slots.provision(image(MODEL, 1), 1)
    with pytest.raises(RollbackError):
        device.install(2)
    assert device.minimum_version() == 3
