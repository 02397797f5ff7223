"""Reference values: the measurements each allowed firmware release produces.

A :class:`ReferenceRelease` names a device model, a release version and the
SHA-256 of every boot stage's image. Several releases of one model may be
allowed at once (a staged rollout has old and new in the field). Releases
come from signed firmware releases (the firmware-update issue publishes
them); :func:`reference_release` builds one from measurements.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from iotguard.errors import ConfigError

__all__ = ["ReferenceRelease", "ReferenceValues", "reference_release"]


@dataclass(frozen=True)
class ReferenceRelease:
    """The expected measurements of one firmware release of one device model."""

    model: str
    version: str
    measurements: Mapping[str, bytes]


def reference_release(model: str, version: str, measurements: Mapping[str, bytes]) -> ReferenceRelease:
    """Validate and freeze a release's reference measurements.

    Raises:
        ConfigError: empty model/version, no stages, or a digest that is not 32 bytes.
    """
    if not model or not version or not measurements:
        raise ConfigError("a reference release needs a model, a version and measurements")
    for stage, digest in measurements.items():
        if not stage or not isinstance(digest, bytes) or len(digest) != 32:
            raise ConfigError(f"reference measurement of {stage!r} must be a SHA-256 digest")
    return ReferenceRelease(model, version, MappingProxyType(dict(measurements)))


class ReferenceValues:
    """The allowed releases, by model and version."""

    def __init__(self, releases: Iterable[ReferenceRelease] = ()) -> None:
        self._by_key: dict[tuple[str, str], ReferenceRelease] = {}
        for release in releases:
            self.add(release)

    def add(self, release: ReferenceRelease) -> None:
        """Allow a release (replaces one with the same model and version)."""
        self._by_key[(release.model, release.version)] = release

    def remove(self, model: str, version: str) -> None:
        """Stop allowing a release (revoked, or rolled out past)."""
        self._by_key.pop((model, version), None)

    def lookup(self, model: str, version: str) -> ReferenceRelease | None:
        """The allowed release of ``model`` with ``version``, if any."""
        return self._by_key.get((model, version))

    def versions(self, model: str) -> list[str]:
        """Allowed versions of ``model``, sorted."""
        return sorted(v for m, v in self._by_key if m == model)
