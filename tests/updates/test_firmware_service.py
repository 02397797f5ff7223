"""The hub's firmware service: repository in a store, online key in the key store, audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from iotguard.agent.firmware import FirmwareUpdateClient, TransportFetcher
from iotguard.audit.log import MemoryAuditSink
from iotguard.clock import FixedClock
from iotguard.errors import ConfigError, IntegrityError
from iotguard.hub.services.firmware import FirmwareService
from iotguard.hub.stores.firmware import MemoryFirmwareFileStore
from iotguard.keys.software import SoftwareKeyStore
from iotguard.updates import FirmwareRelease
from tests.updates.conftest import BASE_URL, MODEL, image


def _service(
    tmp_path: Path, files: MemoryFirmwareFileStore, clock: FixedClock,
) -> tuple[FirmwareService, MemoryAuditSink]:
    audit = MemoryAuditSink()
    keys = SoftwareKeyStore(tmp_path / "hub-keys", device_binding=b"hub key store binding 0000001")
    return FirmwareService(files, keys, audit, clock), audit


def test_publish_through_the_service_reaches_a_device(tmp_path: Path) -> None:
    clock = FixedClock(datetime.now(tz=UTC))
    files = MemoryFirmwareFileStore()
    service, audit = _service(tmp_path, files, clock)
    roots = [CryptoSigner.generate_ed25519() for _ in range(3)]
    targets, model_key = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    root = service.initialise(root_signers=roots, root_threshold=2, targets_signer=targets, actor="alice")
    with pytest.raises(ConfigError):
        service.initialise(root_signers=roots, root_threshold=2, targets_signer=targets, actor="alice")
    service.add_model(MODEL, model_signer=model_key, targets_signer=targets, actor="alice")
    data = image(MODEL, 2)
    release = FirmwareRelease.for_image(MODEL, 2, data, end_of_support=clock.now().date() + timedelta(days=900),
                                        disclosure_contact="security@example.org")
    service.publish(release, data, model_signer=model_key, actor="alice")
    assert service.releases(MODEL) == [release]
    assert [e.type for e in audit.events] == [
        "firmware.repository_created", "firmware.model_delegated", "firmware.published"]

    device_keys = SoftwareKeyStore(tmp_path / "dev-keys", device_binding=b"device key store binding 001")
    FirmwareUpdateClient.trust(tmp_path / "dev", root)
    client = FirmwareUpdateClient(
        tmp_path / "dev", model=MODEL, counters=device_keys, base_url=BASE_URL, self_test=lambda _s, _i: None,
        fetcher=TransportFetcher(lambda url: service.file(url[len(BASE_URL) + 1:])),
    )
    client.slots.provision(image(MODEL, 1), 1)
    assert client.install(2).version == 2

    # A second hub process that read the repository before this publish cannot overwrite it.
    stale = files.load()
    service.revoke(MODEL, 2, model_signer=model_key, actor="alice")
    assert service.releases(MODEL) == []
    other = MemoryFirmwareFileStore()
    other.save(stale)
    other_service, _ = _service(tmp_path, other, clock)  # the same hub key store, another process
    other_service.publish(FirmwareRelease.for_image(
        MODEL, 3, image(MODEL, 3), end_of_support=release.end_of_support, disclosure_contact="x@example.org",
    ), image(MODEL, 3), model_signer=model_key, actor="bob")
    with pytest.raises(IntegrityError):
        files.save(other.load())


def test_timestamp_refreshed_only_when_half_its_life_is_gone(tmp_path: Path) -> None:
    clock = FixedClock(datetime.now(tz=UTC))
    files = MemoryFirmwareFileStore()
    service, _ = _service(tmp_path, files, clock)
    assert service.refresh_timestamp() is False  # no repository yet
    service.initialise(root_signers=[CryptoSigner.generate_ed25519()], root_threshold=1,
                       targets_signer=CryptoSigner.generate_ed25519(), actor="alice")
    before = files.get("metadata/timestamp.json")
    assert service.refresh_timestamp() is False
    clock.advance(13 * 3600)
    assert service.refresh_timestamp() is True
    assert files.get("metadata/timestamp.json") != before
