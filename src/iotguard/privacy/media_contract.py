"""Media streams in the data contract: what may leave the device from a microphone or a camera.

A contract declares its media streams once::

    [media.voice]
    kind = "audio"
    description = "sound picked up by the microphone"

and, per purpose, what of each stream may leave the device::

    [purposes.assistant.media.voice]
    release = "anonymised"           # none | inference | anonymised | raw
    method = "pseudo-speaker"        # anonymised: the transform (default: the strongest shipped)

    [purposes.occupancy.media.camera]
    release = "inference"
    model = "people-count"           # inference: the device-side model ...
    field = "people"                 # ... and the declared field its label goes into

``raw`` media may only be declared for a purpose whose legal basis is
explicit consent. ``inference`` needs the label field declared for the
same purpose with a type that fits the model. Everything is checked when
the contract is parsed; an error names the key path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from iotguard.errors import ConfigError, PolicyDenied

__all__ = [
    "ANONYMISERS",
    "INFERENCE_MODELS",
    "MediaKind",
    "MediaRelease",
    "MediaStreamSpec",
    "Release",
    "check_media",
    "media_to_dict",
    "parse_media_streams",
    "parse_purpose_media",
]


class MediaKind(StrEnum):
    """What a media stream carries."""

    AUDIO = "audio"
    IMAGE = "image"


class Release(StrEnum):
    """What of a media stream may leave the device for one purpose."""

    NONE = "none"
    INFERENCE = "inference"
    ANONYMISED = "anonymised"
    RAW = "raw"


#: Anonymisation methods per media kind (the first is the default: the strongest shipped).
ANONYMISERS: Mapping[MediaKind, tuple[str, ...]] = MappingProxyType({
    MediaKind.AUDIO: ("pseudo-speaker", "randomised-vocoder", "mcadams"),
    MediaKind.IMAGE: ("face-redact",),
})
#: Device-side inference models per media kind, with the field types their label fits.
INFERENCE_MODELS: Mapping[MediaKind, Mapping[str, tuple[str, ...]]] = MappingProxyType({
    MediaKind.AUDIO: MappingProxyType({"voice-activity": ("bool",), "spoken-digit": ("category", "int")}),
    MediaKind.IMAGE: MappingProxyType({"people-count": ("int",), "presence": ("bool",)}),
})
_RELEASE_KEYS = {"release", "method", "params", "model", "field"}


@dataclass(frozen=True)
class MediaStreamSpec:
    """A media stream a device model captures."""

    name: str
    kind: MediaKind
    description: str


@dataclass(frozen=True)
class MediaRelease:
    """What one purpose may take from one media stream."""

    stream: str
    release: Release
    method: str | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    model: str | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain form, used in the contract digest and the notice."""
        out: dict[str, Any] = {"release": self.release.value}
        if self.method is not None:
            out["method"] = self.method
            out["params"] = dict(self.params)
        if self.model is not None:
            out["model"] = self.model
            out["field"] = self.field
        return out

    def describe(self) -> str:
        """The receipt's transform entry: what ran, with which parameters."""
        if self.release is Release.INFERENCE:
            return f"inference:{self.model}"
        if self.release is Release.ANONYMISED:
            return f"anonymised:{self.method}:" + json.dumps(dict(self.params), sort_keys=True, separators=(",", ":"))
        return self.release.value


def _text(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: expected non-empty text")
    return v


def parse_media_streams(raw: Any) -> dict[str, MediaStreamSpec]:
    """Parse the contract's ``[media.NAME]`` tables.

    Raises:
        ConfigError: not tables, unknown keys, or an unknown kind.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("media: expected at least one [media.NAME] table")
    out: dict[str, MediaStreamSpec] = {}
    for name, t in raw.items():
        where = f"media.{name}"
        if not isinstance(t, dict) or set(t) - {"kind", "description"} or not {"kind", "description"} <= set(t):
            raise ConfigError(f"{where}: expected a table with exactly 'kind' and 'description'")
        try:
            kind = MediaKind(t["kind"])
        except ValueError:
            raise ConfigError(f"{where}.kind: {t['kind']!r} is not one of {[k.value for k in MediaKind]}") from None
        out[name] = MediaStreamSpec(name, kind, _text(t["description"], f"{where}.description"))
    return out


def _params(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ConfigError(f"{where}.{k}: expected a number or text")
    return dict(raw)


def parse_purpose_media(purpose: str, raw: Any, streams: Mapping[str, MediaStreamSpec],
                        field_types: Mapping[str, str], *, consent_basis: bool) -> dict[str, MediaRelease]:
    """Parse ``[purposes.P.media.STREAM]`` tables of one purpose.

    Args:
        purpose: The purpose's name (for error paths).
        raw: The purpose's ``media`` table (``None`` when absent).
        streams: The contract's media streams.
        field_types: Field name to type of the fields this purpose declares.
        consent_basis: Whether the purpose's legal basis is consent.

    Raises:
        ConfigError: an undeclared stream, a release that does not fit, raw
            media without consent, or an inference label without its field.
    """
    if raw is None:
        return {}
    where = f"purposes.{purpose}.media"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    out: dict[str, MediaRelease] = {}
    for name, t in raw.items():
        w = f"{where}.{name}"
        spec = streams.get(name)
        if spec is None:
            raise ConfigError(f"{w}: stream {name!r} is not declared under [media]")
        if not isinstance(t, dict) or "release" not in t or set(t) - _RELEASE_KEYS:
            raise ConfigError(f"{w}: expected a table with 'release' and only {sorted(_RELEASE_KEYS)}")
        try:
            release = Release(t["release"])
        except ValueError:
            raise ConfigError(f"{w}.release: {t['release']!r} is not one of {[r.value for r in Release]}") from None
        extra = set(t) - {"release"}
        if release is Release.ANONYMISED:
            if extra - {"method", "params"}:
                raise ConfigError(f"{w}: an anonymised release takes only 'method' and 'params'")
            methods = ANONYMISERS[spec.kind]
            method = t.get("method", methods[0])
            if method not in methods:
                raise ConfigError(f"{w}.method: {method!r} is not one of {list(methods)} for {spec.kind.value}")
            out[name] = MediaRelease(name, release, method, MappingProxyType(_params(t.get("params"), f"{w}.params")))
        elif release is Release.INFERENCE:
            if extra != {"model", "field"}:
                raise ConfigError(f"{w}: an inference release takes exactly 'model' and 'field'")
            models = INFERENCE_MODELS[spec.kind]
            model, fname = t["model"], t["field"]
            if model not in models:
                raise ConfigError(f"{w}.model: {model!r} is not one of {sorted(models)} for {spec.kind.value}")
            if fname not in field_types:
                raise ConfigError(f"{w}.field: {fname!r} is not a field declared for purpose {purpose!r}")
            if field_types[fname] not in models[model]:
                raise ConfigError(f"{w}.field: {model!r} labels fit {list(models[model])} fields, "
                                  f"not {field_types[fname]}")
            out[name] = MediaRelease(name, release, model=model, field=fname)
        else:
            if extra:
                raise ConfigError(f"{w}: a {release.value} release takes no other keys")
            if release is Release.RAW and not consent_basis:
                raise ConfigError(f"{w}: raw media may only leave the device for a purpose "
                                  "whose legal basis is consent")
            out[name] = MediaRelease(name, release)
    return out


def media_to_dict(streams: Mapping[str, MediaStreamSpec]) -> dict[str, Any]:
    """Plain form of the contract's media streams."""
    return {s.name: {"kind": s.kind.value, "description": s.description} for s in streams.values()}


def check_media(streams: Mapping[str, MediaStreamSpec], releases: Mapping[str, MediaRelease], purpose: str,
                stream: str, release: str, method: str | None) -> MediaRelease:
    """Check a media object against what the contract allows for its purpose (hub side).

    Raises:
        PolicyDenied: undeclared stream, or a release or method other than the one declared.
    """
    if stream not in streams:
        raise PolicyDenied(f"media stream {stream!r} is not declared")
    declared = releases.get(stream)
    if declared is None or declared.release in (Release.NONE, Release.INFERENCE):
        raise PolicyDenied(f"no media of stream {stream!r} may leave the device for purpose {purpose!r}")
    if release != declared.release.value or (declared.method is not None and method != declared.method):
        raise PolicyDenied(f"stream {stream!r} for {purpose!r} must be {declared.describe()}")
    return declared
