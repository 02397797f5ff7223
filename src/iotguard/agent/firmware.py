"""The agent's firmware update client: ``tuf.ngclient`` plus A/B slots.

TUF (``tuf.ngclient.Updater``) decides whether metadata and image are
authentic, fresh, consistent and of bounded size; this module adds what TUF
cannot know about the device:

- the release must be for this device's model (its delegated role and its
  signed ``custom.model``);
- the anti-rollback counter ``firmware:<model>`` in the key store
  (``KeyStore.advance_counter``: a monotonic counter, TPM NV on the TPM
  backend) refuses an older release even when it is correctly signed;
- the install is A/B (:class:`~iotguard.agent.slots.FirmwareSlots`) with a
  trial boot and self-test, committed or rolled back by the device itself.

The fetcher is injected (:class:`TransportFetcher` over any ``url -> bytes``
transport); python-tuf's ``FetcherInterface`` enforces the length limits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from tuf.api.exceptions import DownloadError, DownloadHTTPError, RepositoryError
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from iotguard.agent.slots import BootedSlot, FirmwareSlots, SlotImage
from iotguard.errors import MalformedError, RollbackError, UpdateRefused
from iotguard.fileio import atomic_write
from iotguard.updates.release import FirmwareRelease, target_path

__all__ = [
    "FirmwareUpdateClient",
    "InstallOutcome",
    "InstallStep",
    "TransportFetcher",
    "anti_rollback_counter",
]

#: Size limits for metadata (bytes); images are bounded by their signed length.
DEFAULT_CONFIG = UpdaterConfig(
    max_root_rotations=32,
    max_delegations=8,
    root_max_length=64 * 1024,
    timestamp_max_length=4 * 1024,
    snapshot_max_length=256 * 1024,
    targets_max_length=1024 * 1024,
)
_CHUNK = 64 * 1024


class MonotonicCounters(Protocol):
    """Where the anti-rollback counter lives: a :class:`~iotguard.keys.KeyStore`
    or a :class:`~iotguard.keys.rot.RootOfTrust` (TPM NV counters on the TPM backend)."""

    def counter(self, name: str) -> int:
        """Current value (0 if never used)."""
        ...

    def advance_counter(self, name: str, to_at_least: int) -> int:
        """Raise the counter durably; it never goes down."""
        ...


class InstallStep(StrEnum):
    """The steps of an install, in order (power may fail after any of them)."""

    DOWNLOAD = "download"
    WRITE = "write"
    SWITCH = "switch"
    TRIAL_BOOT = "trial_boot"
    SELF_TEST = "self_test"
    COMMIT = "commit"


@dataclass(frozen=True)
class InstallOutcome:
    """How an install ended: the committed version and whether it rolled back."""

    version: int
    rolled_back: bool


def anti_rollback_counter(model: str) -> str:
    """The key-store counter holding the lowest version ``model`` may run."""
    return f"firmware:{model}"


class TransportFetcher(FetcherInterface):
    """A TUF fetcher over an authenticated transport (``url -> bytes | None``).

    ``None`` means the file does not exist (HTTP 404). The base class bounds
    every download by the length the caller allows.
    """

    def __init__(self, transport: Callable[[str], bytes | None]) -> None:
        self._transport = transport

    def _fetch(self, url: str) -> Iterator[bytes]:
        body = self._transport(url)
        if body is None:
            raise DownloadHTTPError(f"not found: {url}", 404)
        return (body[i : i + _CHUNK] for i in range(0, len(body), _CHUNK))


class FirmwareUpdateClient:
    """Installs signed releases of one device model, A/B, never backwards.

    Args:
        data_dir: The agent's data directory (TUF metadata cache, slots, staging).
        model: This device's model.
        counters: Holds the anti-rollback counter (key store, or the TPM's NV
            counters through its root of trust).
        fetcher: How metadata and images are fetched.
        base_url: Repository URL (``metadata/`` and ``targets/`` under it).
        self_test: Runs on the trial boot; returns normally if the new
            firmware is healthy, raises otherwise.
        on_step: Called after each :class:`InstallStep` (fault injection in tests).
        config: TUF client limits.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        model: str,
        counters: MonotonicCounters,
        fetcher: FetcherInterface,
        base_url: str,
        self_test: Callable[[BootedSlot, bytes], None],
        on_step: Callable[[InstallStep], None] | None = None,
        config: UpdaterConfig | None = None,
        trial_boots: int = 3,
    ) -> None:
        self._dir = Path(data_dir) / "firmware"
        self._model = model
        self._counters = counters
        self._fetcher = fetcher
        self._base_url = base_url.rstrip("/")
        self._self_test = self_test
        self._on_step = on_step or (lambda _step: None)
        self._config = config or DEFAULT_CONFIG
        self.slots = FirmwareSlots(data_dir, trial_boots=trial_boots)

    @staticmethod
    def trust(data_dir: str | Path, root: bytes) -> None:
        """Install the fleet's initial TUF root (at enrolment)."""
        atomic_write(Path(data_dir) / "firmware" / "metadata" / "root.json", root)

    def _updater(self) -> Updater:
        return Updater(
            metadata_dir=str(self._dir / "metadata"),
            metadata_base_url=f"{self._base_url}/metadata/",
            target_dir=str(self._dir / "staging"),
            target_base_url=f"{self._base_url}/targets/",
            fetcher=self._fetcher,
            config=self._config,
            bootstrap=None,
        )

    def refresh(self) -> None:
        """Refresh the trusted TUF metadata (root chain, timestamp, snapshot, targets) and nothing else.

        Raises:
            UpdateRefused: TUF refused the metadata.
        """
        try:
            self._updater().refresh()
        except (RepositoryError, DownloadError) as exc:
            raise UpdateRefused(f"TUF refused the update: {type(exc).__name__}") from exc

    def minimum_version(self) -> int:
        """The anti-rollback counter: no release below it is installed."""
        return self._counters.counter(anti_rollback_counter(self._model))

    def fetch_release(self, version: int) -> tuple[FirmwareRelease, bytes]:
        """Refresh TUF metadata, then download and verify release ``version``.

        Raises:
            RollbackError: ``version`` is below the anti-rollback counter, or
                not newer than the running firmware.
            UpdateRefused: TUF refused metadata or image, the release does not
                exist, it is for another model, or its signed release fields are
                malformed (``update_release_malformed``).
        """
        self._check_version(version)
        try:
            updater = self._updater()
            updater.refresh()
            info = updater.get_targetinfo(target_path(self._model, version))
            if info is None:
                raise UpdateRefused(f"no release {version} for {self._model}", code="update_not_found")
            custom = info.unrecognized_fields.get("custom")
            release = FirmwareRelease.from_target(info.path, info.length, info.hashes, custom)
            if release.model != self._model or release.version != version:
                raise UpdateRefused("release is for another model or version", code="update_wrong_model")
            staged = updater.download_target(info, filepath=str(self._dir / "staging" / "image"))
        except (RepositoryError, DownloadError) as exc:
            raise UpdateRefused(f"TUF refused the update: {type(exc).__name__}") from exc
        except MalformedError as exc:
            raise UpdateRefused(f"release metadata malformed: {exc}", code="update_release_malformed") from exc
        self._check_version(release.version)
        return release, Path(staged).read_bytes()

    def install(self, version: int) -> InstallOutcome:
        """Download, write, switch, trial-boot, self-test and commit ``version``.

        Returns the outcome; a failed self-test rolls back and reports it.

        Raises:
            RollbackError, UpdateRefused: see :meth:`fetch_release`.
        """
        release, image = self.fetch_release(version)
        self._on_step(InstallStep.DOWNLOAD)
        self.slots.write_inactive(image, release.version, release.image_sha256, release.image_length)
        self._on_step(InstallStep.WRITE)
        self.slots.switch()
        self._on_step(InstallStep.SWITCH)
        booted = self.slots.boot()
        self._on_step(InstallStep.TRIAL_BOOT)
        return self.resume(booted)

    def resume(self, booted: BootedSlot) -> InstallOutcome:
        """After a boot: self-test a trial and commit or roll back it.

        Also re-asserts the anti-rollback counter for the committed version,
        so a power loss between commit and counter update is repaired.
        """
        if not booted.trial:
            self._advance(booted.image)
            return InstallOutcome(booted.image.version, rolled_back=False)
        try:
            self._self_test(booted, self.slots.read(booted.slot))
        except Exception:
            committed = self.slots.rollback()
            self._on_step(InstallStep.SELF_TEST)
            return InstallOutcome(committed.version, rolled_back=True)
        self._on_step(InstallStep.SELF_TEST)
        committed = self.slots.commit()
        self._advance(committed)
        self._on_step(InstallStep.COMMIT)
        return InstallOutcome(committed.version, rolled_back=False)

    def _advance(self, image: SlotImage) -> None:
        self._counters.advance_counter(anti_rollback_counter(self._model), image.version)

    def _check_version(self, version: int) -> None:
        if version < self.minimum_version():
            raise RollbackError(f"release {version} is below the anti-rollback counter {self.minimum_version()}")
        if self.slots.provisioned() and version <= self.slots.active().version:
            raise RollbackError(f"release {version} is not newer than the running firmware")


