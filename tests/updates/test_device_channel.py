"""TUF over the device channel: the real hub (services, device plane, Cedar, SQL store) serves the
repository as signed ``update_fetch`` requests, and the agent refuses whatever TUF refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from iotguard.agent.firmware import anti_rollback_counter
from iotguard.errors import UpdateRefused
from iotguard.hub.stores.firmware import firmware_files
from tests.hub.conftest import HubParts
from tests.updates.hubside import HUB_MODEL, HubFirmware, firmware_hub


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[HubFirmware]:
    yield from firmware_hub(tmp_path)


def _set_file(hub: HubParts, path: str, body: bytes) -> None:
    """What a compromised hub (or database) would serve."""
    with hub.store.engine.begin() as conn:
        assert conn.execute(update(firmware_files).where(firmware_files.c.path == path).values(body=body)).rowcount == 1


def test_device_installs_a_release_served_by_the_hub(repo: HubFirmware) -> None:
    release = repo.publish(2)
    agent, client, _ = repo.device("dev-1")
    outcome = client.install(2)
    assert (outcome.version, outcome.rolled_back) == (2, False)
    assert client.slots.boot().image.sha256 == release.image_sha256
    assert agent.keystore.counter(anti_rollback_counter(HUB_MODEL)) == 2


def test_release_measurements_become_reference_values(repo: HubFirmware) -> None:
    release = repo.publish(2)
    (reference,) = [r for r in repo.hub.services.attestation.store.references() if r.model == HUB_MODEL]
    assert (reference.version, reference.measurements["app"].hex()) == ("2", release.measurements["app"])
    repo.hub.services.firmware.revoke(HUB_MODEL, 2, model_signer=repo.model_key, actor="test")
    assert not [r for r in repo.hub.services.attestation.store.references() if r.model == HUB_MODEL]


def test_arbitrary_software_served_by_the_hub_is_refused(repo: HubFirmware) -> None:
    """An image swapped in the hub's store: TUF's hash check refuses it; the device keeps firmware 1."""
    repo.publish(2)
    (path,) = [p for p in repo.hub.services.firmware._files.load() if p.startswith("targets/")]
    original = repo.hub.services.firmware.file(path)
    assert original is not None
    _set_file(repo.hub, path, b"\x00" * len(original))
    _, client, _ = repo.device("dev-1")
    with pytest.raises(UpdateRefused):
        client.install(2)
    assert client.slots.boot().image.version == 1


def test_rolled_back_timestamp_served_by_the_hub_is_refused(repo: HubFirmware) -> None:
    """Rollback attack: after the device saw release 3, the hub serves an older timestamp."""
    repo.publish(2)
    old_timestamp = repo.hub.services.firmware.file("metadata/timestamp.json")
    assert old_timestamp is not None
    repo.publish(3)
    _, client, _ = repo.device("dev-1")
    assert client.install(3).version == 3
    _set_file(repo.hub, "metadata/timestamp.json", old_timestamp)
    with pytest.raises(UpdateRefused, match="TUF refused"):
        client.fetch_release(4)


def test_endless_timestamp_served_by_the_hub_is_refused(repo: HubFirmware) -> None:
    """Endless data: a timestamp larger than the client's limit is cut off while streaming."""
    repo.publish(2)
    _set_file(repo.hub, "metadata/timestamp.json", b"{" + b" " * (1024 * 1024))
    _, client, _ = repo.device("dev-1")
    with pytest.raises(UpdateRefused, match="TUF refused"):
        client.install(2)


def test_quarantined_device_cannot_fetch_updates(repo: HubFirmware) -> None:
    repo.publish(2)
    agent, client, _ = repo.device("dev-1")
    repo.hub.services.posture.quarantine("dev-1", actor="test", reason="suspicious traffic")
    with pytest.raises(UpdateRefused):
        client.install(2)
    wire, _ = agent._signed("update_fetch", {"path": "metadata/timestamp.json"})
    r = repo.hub.client.post("/v1/firmware/fetch", json=wire)
    assert (r.status_code, r.json()["error"]) == (403, "policy_denied")


def test_device_cannot_fetch_another_models_releases(repo: HubFirmware) -> None:
    repo.hub.services.firmware.add_model("camera", model_signer=repo.model_key, targets_signer=repo.targets,
                                         actor="test")
    agent, _, _ = repo.device("dev-1")
    for path in ("metadata/1.camera.json", "targets/camera/" + "a" * 64 + ".camera-2.img"):
        wire, _ = agent._signed("update_fetch", {"path": path})
        r = repo.hub.client.post("/v1/firmware/fetch", json=wire)
        assert (r.status_code, r.json()["error"]) == (422, "update_wrong_model"), path
    wire, _ = agent._signed("update_fetch", {"path": f"metadata/1.{HUB_MODEL}.json"})
    assert repo.hub.client.post("/v1/firmware/fetch", json=wire).status_code == 200


@pytest.mark.parametrize("path", ["../hub.db", "metadata/../../etc/passwd", "metadata/root.json", "targets/x",
                                  "metadata/0.root.json", ""])
def test_fetch_refuses_paths_outside_the_repository(repo: HubFirmware, path: str) -> None:
    agent, _, _ = repo.device("dev-1")
    wire, _ = agent._signed("update_fetch", {"path": path})
    r = repo.hub.client.post("/v1/firmware/fetch", json=wire)
    assert (r.status_code, r.json()["error"]) == (400, "malformed")


def test_fetch_needs_a_signed_request_and_refuses_a_replay(repo: HubFirmware) -> None:
    agent, _, _ = repo.device("dev-1")
    assert repo.hub.client.post("/v1/firmware/fetch", json={}).status_code == 401
    wire, _ = agent._signed("update_fetch", {"path": "metadata/1.root.json"})
    assert repo.hub.client.post("/v1/firmware/fetch", json=wire).content == repo.root
    r = repo.hub.client.post("/v1/firmware/fetch", json=wire)
    assert (r.status_code, r.json()["error"]) == (409, "replay")
    renewal, _ = agent._signed("update_check", {"version": 1, "attempted": 0, "outcome": "none"})
    assert repo.hub.client.post("/v1/firmware/fetch", json=renewal).status_code == 400
