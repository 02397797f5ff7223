"""The privacy pipeline as the agent runs it: before anything is sealed.

Every sensor sample goes through the device model's data contract
(:mod:`iotguard.privacy`): only fields declared for a purpose the data
subject consented to leave the device, transformed as the contract says,
within the privacy-loss budget. Each batch of released readings is covered
by a privacy receipt signed with the device's identity key.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from iotguard.clock import Clock
from iotguard.errors import PolicyDenied
from iotguard.keys import KeyStore
from iotguard.privacy import (
    ConsentState,
    KeyStoreLedgerStore,
    PrivacyLossLedger,
    PrivacyPipeline,
    ReceiptBuilder,
    ReceiptEntry,
    keyring_from_keystore,
    load_contract,
)
from iotguard.wire import MediaObject, Reading

if TYPE_CHECKING:
    from iotguard.media.audio import Audio
    from iotguard.media.image import Frame
    from iotguard.media.sensing import AudioModels, ImageModels
    from iotguard.privacy.media_pipeline import MediaOutput, MediaPipeline

__all__ = ["RECEIPT_KEY_LABEL", "DevicePrivacy"]

#: Receipts are signed by the identity key (the hub knows it from enrollment);
#: the receipt format's own domain separation keeps those signatures apart.
RECEIPT_KEY_LABEL = "identity"


class DevicePrivacy:
    """A device's privacy pipeline, consent state and receipt batch.

    Args:
        keystore: The device key store (pseudonym root, budget ledger, receipt key).
        device_id: The device id.
        model: Device model; selects the shipped data contract.
        consent: The data subject's consent decisions the device enforces.
        clock: Time for consent, frequency limits, budget periods and pseudonym periods.
        rng: Seeded randomness for simulations only; the OS CSPRNG otherwise.
    """

    def __init__(self, keystore: KeyStore, device_id: str, model: str, consent: ConsentState, clock: Clock,
                 *, rng: random.Random | None = None, audio_models: AudioModels | None = None,
                 image_models: ImageModels | None = None, media_seed: int | None = None) -> None:
        self.contract = load_contract(model)
        self.keystore = keystore
        self.clock = clock
        ledger = PrivacyLossLedger(KeyStoreLedgerStore(keystore), self.contract.budget_epsilon,
                                   self.contract.budget_period)
        self.pipeline = PrivacyPipeline(
            self.contract, consent, keyring_from_keystore(keystore, self.contract.pseudonym_rotation),
            ledger, clock, device_id=device_id, rng=rng)
        #: The media pipeline, for models whose contract declares microphone or camera streams.
        self.media: MediaPipeline | None = None
        if self.contract.media:
            # Imported here so devices without media never load the signal-processing stack.
            from iotguard.privacy.media_pipeline import MediaPipeline

            self.media = MediaPipeline(self.contract, self.pipeline, ledger, clock, audio_models=audio_models,
                                       image_models=image_models, seed=media_seed)
        self.receipts = ReceiptBuilder(device_id, self.contract, self.pipeline.config_sha256)
        #: Purpose -> reason code of the last refusal (consent, frequency, budget).
        self.refused: dict[str, str] = {}

    def process(self, sample: Mapping[str, Any], ts_ms: int | None = None) -> list[Reading]:
        """Readings that may leave the device for this sample, one per permitted purpose.

        Every reading returned is counted in the next receipt; a caller that
        may fail to keep a reading uses :meth:`release` and :meth:`record`.

        Raises:
            MalformedError: the sensor produced a value of the wrong kind.
        """
        released = self.release(sample, ts_ms)
        for _reading, entry in released:
            self.record(entry)
        return [reading for reading, _entry in released]

    def release(self, sample: Mapping[str, Any], ts_ms: int | None = None) -> list[tuple[Reading, ReceiptEntry]]:
        """Like :meth:`process`, but nothing is counted in the receipt yet: each reading comes with its
        receipt entry, to :meth:`record` once the reading is kept for sending (in the outbox).

        Raises:
            MalformedError: the sensor produced a value of the wrong kind.
        """
        out = self.pipeline.process_all(sample, ts_ms=ts_ms)
        self.refused = dict(out.refused)
        return [(Reading(r.ts_ms, dict(r.fields), r.purpose), r.receipt_entry) for r in out.readings]

    def record(self, entry: ReceiptEntry) -> None:
        """Count a released reading in the next receipt (in the order readings are sent)."""
        self.receipts.add(entry)

    def process_media(self, stream: str, media: Audio | Frame, ts_ms: int | None = None,
                      ) -> tuple[list[Reading], list[MediaObject]]:
        """Labels and media objects that may leave the device for one clip or frame.

        Labels are readings like any other; media objects go out on the
        device's media topic. Both are covered by the next receipt; a caller
        that may fail to send them uses :meth:`release_media` and :meth:`record`.

        Raises:
            PolicyDenied: the model's contract declares no such media stream.
        """
        labels, objects = self.release_media(stream, media, ts_ms)
        for _item, entry in (*labels, *objects):
            self.record(entry)
        return [r for r, _e in labels], [m for m, _e in objects]

    def release_media(self, stream: str, media: Audio | Frame, ts_ms: int | None = None,
                      ) -> tuple[list[tuple[Reading, ReceiptEntry]], list[tuple[MediaObject, ReceiptEntry]]]:
        """Like :meth:`process_media`, but nothing is counted in the receipt yet: each label and media object
        comes with its receipt entry, to :meth:`record` once it is kept or sent.

        Raises:
            PolicyDenied: the model's contract declares no such media stream.
        """
        if self.media is None:
            raise PolicyDenied(f"the {self.contract.model} contract declares no media streams")
        from iotguard.media.audio import Audio

        out: MediaOutput = (self.media.process_audio(stream, media, ts_ms=ts_ms) if isinstance(media, Audio)
                            else self.media.process_image(stream, media, ts_ms=ts_ms))
        self.refused = dict(out.refused)
        return ([(Reading(r.ts_ms, dict(r.fields), r.purpose), r.receipt_entry) for r in out.readings],
                [(m.media, m.receipt_entry) for m in out.media])

    def seal_receipt(self, now: datetime) -> bytes | None:
        """Sign the receipt for the readings released since the last one (None if none were)."""
        if not len(self.receipts):
            return None
        return self.receipts.seal(self.keystore, now, label=RECEIPT_KEY_LABEL).encode()
