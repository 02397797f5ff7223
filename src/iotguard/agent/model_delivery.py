"""Trained models through the firmware-update channel: ``tuf.ngclient`` over the device's update fetcher.

A device that holds the fleet's trusted TUF root (``<data_dir>/firmware/metadata/root.json``,
installed at manufacture) fetches models only this way (ADR 1303): the newest
version of the model named in its device model's signed role
(``<device-model>/<name>-<version>.igm``) is downloaded by ``tuf.ngclient``,
which verifies signatures, expiry, hashes and length; the artifact's own
signature by the hub's model key (endorsed by the pinned fleet CA, carried
in the signed target) is then checked too. Anything TUF does not verify is
refused; there is no fallback to the hub-signed ``learn_model`` answer, so a
hub cannot bypass TUF by hiding its repository. Only a device without a
trusted root (the hub has no firmware repository) uses ``learn_model``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization import DeserializationError
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from iotguard.agent.firmware import DEFAULT_CONFIG
from iotguard.errors import IntegrityError, MalformedError, UpdateRefused
from iotguard.learn.artifact import MAX_ARTIFACT_BYTES, ModelArtifact, verify_endorsed_artifact
from iotguard.updates.model_target import ModelTarget, model_target_path, model_versions

__all__ = ["TufModelSource", "has_trusted_root"]


def has_trusted_root(data_dir: str | Path) -> bool:
    """Whether the device holds the fleet's TUF root (then models come through TUF only)."""
    return (Path(data_dir) / "firmware" / "metadata" / "root.json").is_file()


class TufModelSource:
    """Fetches and verifies a device model's published models through TUF.

    Args:
        data_dir: The agent's data directory (shares the firmware client's trusted metadata).
        device_model: This device's model (its delegated role lists the models it runs).
        fetcher: The update channel's fetcher (``device_update_channel``).
        base_url: Repository URL the fetcher maps.
        ca_public_key: The pinned fleet CA's raw Ed25519 key (endorses the hub's model key).
    """

    def __init__(self, data_dir: str | Path, *, device_model: str, fetcher: FetcherInterface, base_url: str,
                 ca_public_key: bytes, config: UpdaterConfig | None = None) -> None:
        self._dir = Path(data_dir)
        self._model = device_model
        self._fetcher = fetcher
        self._base = base_url.rstrip("/")
        self._ca = ca_public_key
        self._config = config or DEFAULT_CONFIG

    def _updater(self) -> Updater:
        return Updater(metadata_dir=str(self._dir / "firmware" / "metadata"),
                       metadata_base_url=f"{self._base}/metadata/",
                       target_dir=str(self._dir / "models" / "staging"),
                       target_base_url=f"{self._base}/targets/", fetcher=self._fetcher, config=self._config,
                       bootstrap=None)

    def fetch(self, name: str) -> ModelArtifact | None:
        """The newest version of ``name`` the signed metadata lists, verified; ``None`` if it lists none.

        Raises:
            UpdateRefused: TUF refused metadata or artifact, or the target is malformed (``update_refused``);
                the download failed (``download_failed``: transient, try again later).
            IntegrityError: the artifact's own signature or its key's endorsement does not verify.
            MalformedError: the artifact is malformed, or is not the version its target names.
        """
        (self._dir / "models" / "staging").mkdir(parents=True, exist_ok=True)
        try:
            updater = self._updater()
            updater.refresh()
            # Loads (and verifies) this device model's delegated role, which ngclient then keeps on disk.
            updater.get_targetinfo(model_target_path(self._model, name, 1))
            role = self._dir / "firmware" / "metadata" / f"{quote(self._model, '')}.json"
            try:
                paths = list(Metadata[Targets].from_bytes(role.read_bytes()).signed.targets)
            except (OSError, DeserializationError):
                paths = []
            versions = model_versions(paths, self._model, name)
            if not versions:
                return None
            info = updater.get_targetinfo(model_target_path(self._model, name, versions[-1]))
            if info is None:
                return None
            target = ModelTarget.from_target(info.path, info.length, info.hashes,
                                             info.unrecognized_fields.get("custom"))
            if target.length > MAX_ARTIFACT_BYTES:
                raise UpdateRefused("model target larger than a device accepts")
            staged = updater.download_target(info, filepath=str(self._dir / "models" / "staging" / "model.igm"))
        except RepositoryError as exc:
            raise UpdateRefused(f"TUF refused the model: {type(exc).__name__}") from exc
        except DownloadError as exc:  # the hub or the network failed: a later try may succeed
            raise UpdateRefused(f"model download failed: {type(exc).__name__}", code="download_failed") from exc
        except MalformedError as exc:
            raise UpdateRefused(f"model target metadata malformed: {exc}") from exc
        data = Path(staged).read_bytes()
        artifact = verify_endorsed_artifact(data, target.signing_key, target.endorsement, self._ca)
        if (artifact.name, artifact.version) != (target.name, target.version):
            raise IntegrityError("model artifact is not the version its TUF target names")
        return artifact
