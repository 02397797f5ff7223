"""A firmware release: what one TUF target file of a device model carries.

Beside the image's length and hash (checked by TUF), a release publishes its
lifecycle facts (end of support, disclosure contact) and the per-stage boot
measurements the attestation verifier uses as reference values. They travel
in the target's ``custom`` field, signed by the model's release key, and are
parsed back strictly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from iotguard.errors import MalformedError

__all__ = ["MODEL_PATTERN", "FirmwareRelease", "target_path"]

#: A device model name: also a TUF role name and a path segment.
MODEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_STAGE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
_MAX_VERSION = 2**31 - 1
_MAX_STAGES = 16
_MAX_CONTACT = 256


def target_path(model: str, version: int) -> str:
    """The TUF target path of ``model``'s release ``version``."""
    return f"{model}/{model}-{version}.img"


@dataclass(frozen=True)
class FirmwareRelease:
    """One firmware release of one device model.

    Attributes:
        model: Device model (``MODEL_PATTERN``).
        version: Monotonic release number (1..2**31-1); the anti-rollback
            counter compares these.
        image_sha256: Hex SHA-256 of the image.
        image_length: Image length in bytes.
        end_of_support: Last day this model receives security updates.
        disclosure_contact: Where to report vulnerabilities (URL or mailbox).
        measurements: Boot stage -> hex SHA-256 the verifier expects
            (reference values).
    """

    model: str
    version: int
    image_sha256: str
    image_length: int
    end_of_support: date
    disclosure_contact: str
    measurements: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Fields may come from a signed target's ``custom`` JSON: check types before matching patterns.
        if not all(isinstance(v, str) for v in (self.model, self.image_sha256, self.disclosure_contact)):
            raise MalformedError("release model, image hash and contact must be strings")
        if not MODEL_PATTERN.fullmatch(self.model):
            raise MalformedError(f"bad model name {self.model!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or not 0 < self.version <= _MAX_VERSION:
            raise MalformedError("release version out of range")
        if not _DIGEST_PATTERN.fullmatch(self.image_sha256):
            raise MalformedError("image hash is not a hex SHA-256")
        if isinstance(self.image_length, bool) or not isinstance(self.image_length, int) or self.image_length <= 0:
            raise MalformedError("image length must be positive")
        if not self.disclosure_contact or len(self.disclosure_contact) > _MAX_CONTACT:
            raise MalformedError("disclosure contact missing or too long")
        if len(self.measurements) > _MAX_STAGES:
            raise MalformedError("too many measured stages")
        for stage, digest in self.measurements.items():
            if not _STAGE_PATTERN.fullmatch(stage) or not _DIGEST_PATTERN.fullmatch(digest):
                raise MalformedError(f"bad measurement for stage {stage!r}")

    @classmethod
    def for_image(
        cls,
        model: str,
        version: int,
        image: bytes,
        *,
        end_of_support: date,
        disclosure_contact: str,
        measurements: Mapping[str, str] | None = None,
    ) -> FirmwareRelease:
        """Describe ``image`` as release ``version`` of ``model``."""
        return cls(
            model=model,
            version=version,
            image_sha256=hashlib.sha256(image).hexdigest(),
            image_length=len(image),
            end_of_support=end_of_support,
            disclosure_contact=disclosure_contact,
            measurements=dict(measurements or {}),
        )

    @property
    def path(self) -> str:
        """The TUF target path of this release."""
        return target_path(self.model, self.version)

    def custom(self) -> dict[str, Any]:
        """The target's ``custom`` field (JSON-ready)."""
        return {
            "model": self.model,
            "version": self.version,
            "end_of_support": self.end_of_support.isoformat(),
            "disclosure_contact": self.disclosure_contact,
            "measurements": dict(sorted(self.measurements.items())),
        }

    @classmethod
    def from_target(cls, path: str, length: int, hashes: Mapping[str, str], custom: Any) -> FirmwareRelease:
        """Parse a release back from a verified TUF target (strictly).

        Raises:
            MalformedError: a field is missing, of the wrong type, or does not
                agree with the target path.
        """
        if not isinstance(custom, dict) or set(custom) != {
            "model", "version", "end_of_support", "disclosure_contact", "measurements",
        }:
            raise MalformedError("release custom field has the wrong shape")
        measurements = custom["measurements"]
        if not isinstance(measurements, dict) or not all(isinstance(v, str) for v in measurements.values()):
            raise MalformedError("release measurements have the wrong shape")
        if not isinstance(custom["end_of_support"], str) or not isinstance(custom["disclosure_contact"], str):
            raise MalformedError("release lifecycle fields have the wrong type")
        try:
            eos = date.fromisoformat(custom["end_of_support"])
        except ValueError as exc:
            raise MalformedError("bad end-of-support date") from exc
        sha256 = hashes.get("sha256")
        if sha256 is None:
            raise MalformedError("target has no sha256 hash")
        release = cls(
            model=custom["model"],
            version=custom["version"],
            image_sha256=sha256,
            image_length=length,
            end_of_support=eos,
            disclosure_contact=custom["disclosure_contact"],
            measurements=measurements,
        )
        if release.path != path:
            raise MalformedError("release fields disagree with its target path")
        return release
