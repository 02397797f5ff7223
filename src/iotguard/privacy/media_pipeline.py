"""The device-side media pipeline: what a microphone clip or a camera frame becomes before sealing.

For one captured clip or frame of a declared stream, and each purpose that
declares that stream in the data contract:

* ``none`` — nothing happens; nothing leaves;
* ``inference`` — the device-side model named in the contract turns the
  media into a label, which then goes through the ordinary
  :class:`~iotguard.privacy.pipeline.PrivacyPipeline` as the declared field
  (consent, frequency, budget, the field's transforms); the receipt entry
  names the model that ran;
* ``anonymised`` — after the consent and frequency checks, the contract's
  transform runs on the device (voice: :mod:`iotguard.media.voice`; images:
  :class:`~iotguard.media.image.FaceRedactor`) and the result is encoded as
  a :class:`~iotguard.wire.media.MediaObject`; the receipt entry names the
  transform and its parameters;
* ``raw`` — only under a consent purpose (the contract parser enforces
  that) and only while consent is given.

Raw media of a stream is never returned for a purpose that does not
declare it raw. The pipeline holds no media after returning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from iotguard.clock import Clock
from iotguard.errors import BudgetExhausted, ConfigError, ConsentError, PolicyDenied
from iotguard.media.audio import Audio, encode_wav
from iotguard.media.image import FaceRedactor, Frame, encode_image
from iotguard.media.sensing import AudioModels, ImageModels
from iotguard.media.voice import VoiceTransform, voice_transform
from iotguard.privacy.contract import DataContract
from iotguard.privacy.ledger import PrivacyLossLedger
from iotguard.privacy.media_contract import MediaKind, MediaRelease, Release
from iotguard.privacy.pipeline import PrivacyPipeline, ProcessedReading
from iotguard.privacy.receipt import ReceiptEntry
from iotguard.wire.media import MediaObject, encode_media_object

__all__ = ["MediaOutput", "MediaPipeline", "ReleasedMedia"]


@dataclass(frozen=True)
class ReleasedMedia:
    """A media object that may leave the device, with its receipt entry."""

    media: MediaObject
    receipt_entry: ReceiptEntry


@dataclass(frozen=True)
class MediaOutput:
    """What one clip or frame produced: labelled readings, media objects, refusals by purpose."""

    readings: tuple[ProcessedReading, ...]
    media: tuple[ReleasedMedia, ...]
    refused: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class MediaPipeline:
    """Enforce a contract's media releases on the device.

    Args:
        contract: The device model's data contract (with ``[media]`` streams).
        pipeline: The device's privacy pipeline (labels go through it).
        ledger: The device's privacy-loss ledger (receipt periods).
        clock: Time source for consent and frequency.
        audio_models: Device-side audio models (default: voice activity only).
        image_models: Device-side image models (default: people counting).
        seed: Tests only: fixed seed for anonymiser draws (default: the OS CSPRNG).

    Raises:
        ConfigError: a declared anonymiser's parameters are invalid.
    """

    def __init__(self, contract: DataContract, pipeline: PrivacyPipeline, ledger: PrivacyLossLedger, clock: Clock,
                 *, audio_models: AudioModels | None = None, image_models: ImageModels | None = None,
                 seed: int | None = None) -> None:
        self.contract = contract
        self._pipeline = pipeline
        self._ledger = ledger
        self._clock = clock
        self._audio_models = audio_models or AudioModels()
        self._image_models = image_models or ImageModels()
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}  # monotonic: a wall-clock jump moves no release
        self._voice: dict[tuple[str, str], VoiceTransform] = {}
        self._redactors: dict[tuple[str, str], FaceRedactor] = {}
        for pname, spec in contract.purposes.items():
            for sname, rel in spec.media.items():
                if rel.release is not Release.ANONYMISED:
                    continue
                params: dict[str, Any] = dict(rel.params)
                if set(params) & {"seed", "detector", "name"}:
                    raise ConfigError(f"purposes.{pname}.media.{sname}.params: 'seed', 'detector' and 'name' "
                                      "cannot be set by a contract")
                if seed is not None:
                    params["seed"] = seed
                assert rel.method is not None
                if contract.media[sname].kind is MediaKind.AUDIO:
                    self._voice[(pname, sname)] = voice_transform(rel.method, **params)
                else:
                    try:
                        self._redactors[(pname, sname)] = FaceRedactor(**params)
                    except TypeError as exc:
                        raise ConfigError(f"{rel.method}: {exc}") from None

    def _releases(self, stream: str, kind: MediaKind) -> list[tuple[str, MediaRelease]]:
        spec = self.contract.media.get(stream)
        if spec is None or spec.kind is not kind:
            raise PolicyDenied(f"{kind.value} stream {stream!r} is not declared in the {self.contract.model} contract")
        return [(p, s.media[stream]) for p, s in sorted(self.contract.purposes.items()) if stream in s.media]

    def process_audio(self, stream: str, audio: Audio, *, ts_ms: int | None = None) -> MediaOutput:
        """Run one microphone clip through every purpose that declares ``stream``.

        Raises:
            PolicyDenied: ``stream`` is not a declared audio stream.
        """
        return self._process(stream, MediaKind.AUDIO, audio, ts_ms)

    def process_image(self, stream: str, frame: Frame, *, ts_ms: int | None = None) -> MediaOutput:
        """Run one camera frame through every purpose that declares ``stream``.

        Raises:
            PolicyDenied: ``stream`` is not a declared image stream.
        """
        return self._process(stream, MediaKind.IMAGE, frame, ts_ms)

    def _process(self, stream: str, kind: MediaKind, media: Any, ts_ms: int | None) -> MediaOutput:
        readings: list[ProcessedReading] = []
        released: list[ReleasedMedia] = []
        refused: dict[str, str] = {}
        for purpose, rel in self._releases(stream, kind):
            try:
                if rel.release is Release.INFERENCE:
                    readings.append(self._infer(purpose, rel, kind, media, ts_ms))
                elif rel.release in (Release.ANONYMISED, Release.RAW):
                    released.append(self._release(purpose, rel, kind, media, ts_ms))
            except (ConsentError, PolicyDenied, BudgetExhausted, ConfigError) as exc:
                # A missing device model (ConfigError) refuses its purpose: nothing leaves.
                refused[purpose] = exc.code
        return MediaOutput(tuple(readings), tuple(released), MappingProxyType(refused))

    def _infer(self, purpose: str, rel: MediaRelease, kind: MediaKind, media: Any,
               ts_ms: int | None) -> ProcessedReading:
        assert rel.model is not None and rel.field is not None
        # Consent first: a refused purpose must not even run the model.
        self._pipeline.consent.require(self.contract, purpose, self._clock.now())
        if kind is MediaKind.AUDIO:
            label: Any = self._audio_models.run(rel.model, media)
        else:
            label = self._image_models.run(rel.model, media)
        out = self._pipeline.process({rel.field: label}, purpose, ts_ms=ts_ms)
        entry = out.receipt_entry
        transforms = dict(entry.transforms)
        transforms[rel.field] = (rel.describe(), *transforms.get(rel.field, ()))
        entry = dataclasses.replace(entry, transforms=MappingProxyType(transforms))
        return dataclasses.replace(out, receipt_entry=entry)

    def _release(self, purpose: str, rel: MediaRelease, kind: MediaKind, media: Any,
                 ts_ms: int | None) -> ReleasedMedia:
        spec = self.contract.purpose(purpose)
        with self._lock:
            now = self._clock.now()
            self._pipeline.consent.require(self.contract, purpose, now)
            last = self._last.get((purpose, rel.stream))
            mono = self._clock.monotonic()
            if last is not None and mono - last < spec.min_interval.total_seconds():
                raise PolicyDenied(f"purpose {purpose!r} allows one {rel.stream} release per {spec.min_interval}")
            self._last[(purpose, rel.stream)] = mono
        if kind is MediaKind.AUDIO:
            if rel.release is Release.ANONYMISED:
                media = self._voice[(purpose, rel.stream)].apply(media)
            data, codec = encode_wav(media), "wav"
        else:
            if rel.release is Release.ANONYMISED:
                media, _faces = self._redactors[(purpose, rel.stream)].apply(media)
            data, codec = encode_image(media, "png"), "png"
        ts = int(now.timestamp() * 1000) if ts_ms is None else int(ts_ms)
        if spec.time_resolution is not None:
            res_ms = int(spec.time_resolution.total_seconds() * 1000)
            ts -= ts % res_ms
        obj = MediaObject(ts, purpose, rel.stream, rel.release.value, rel.method, codec, data)
        spend = self._ledger.charge(self._pipeline.device_id, 0.0, purpose, now)
        entry = ReceiptEntry(purpose=purpose, ts_ms=ts, transforms=MappingProxyType({rel.stream: (rel.describe(),)}),
                             dropped=(), epsilon=0.0, period=spend.period, period_total=spend.total,
                             digest=hashlib.sha256(encode_media_object(obj)).digest())
        return ReleasedMedia(obj, entry)
