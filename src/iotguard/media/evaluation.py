"""Evaluation protocols: how well a media transform hides people and keeps utility.

:func:`evaluate_voice` runs the built-in attacker (:mod:`iotguard.media.attacker`)
against one voice transform on a labelled set of utterances; :func:`evaluate_images`
checks face redaction with an independent detector. They return the figures
``iotguard media evaluate`` and ``bench/media.py`` report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from iotguard.media.attacker import (
    DigitRecogniser,
    EmbeddingVerifier,
    SpeakerVerifier,
    Utterance,
    split_utterances,
)
from iotguard.media.audio import Audio
from iotguard.media.image import Box, FaceRedactor, Frame, PeopleCounter, independent_face_detector
from iotguard.media.voice import VoiceTransform

__all__ = ["ImageEvaluation", "VoiceEvaluation", "anonymise_all", "evaluate_images", "evaluate_voice"]


@dataclass(frozen=True)
class VoiceEvaluation:
    """Privacy and utility of one voice transform (rates in [0, 1]).

    Attributes:
        method: Transform name (``"original"`` for no transform).
        eer_ignorant: EER of an attacker enrolled on original voices, tested on
            transformed ones (the lower of the two back ends).
        eer_semi_informed: EER of an attacker who did everything on transformed
            voices (the lower of the two back ends).
        eer_by_attacker: Each back end's EERs (``embedding``, ``gmm_ubm``).
        accuracy: Spoken-content accuracy of a recogniser trained and tested on transformed audio.
        accuracy_original_model: Accuracy on transformed audio of a recogniser trained on originals.
        real_time_factor: Seconds of audio transformed per second of one core's time.
    """

    method: str
    utterances: int
    eer_ignorant: float
    eer_semi_informed: float
    eer_by_attacker: dict[str, dict[str, float]]
    accuracy: float
    accuracy_original_model: float
    real_time_factor: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return asdict(self)


def anonymise_all(transform: VoiceTransform, audios: Sequence[Audio]) -> tuple[list[Audio], float]:
    """Transform each clip (each is its own utterance: fresh draws); returns clips and the real-time factor."""
    start = time.process_time()
    out = [transform.apply(a) for a in audios]
    spent = max(time.process_time() - start, 1e-9)
    return out, sum(a.seconds for a in audios) / spent


def evaluate_voice(utterances: Sequence[Utterance], transform: VoiceTransform | None, *,
                   components: int = 64, enrol_per_speaker: int = 10, seed: int = 0) -> VoiceEvaluation:
    """Attack ``transform`` with the built-in speaker verifier and measure content accuracy.

    ``transform=None`` evaluates the original audio (the baseline both EERs
    and accuracies are compared against).

    Raises:
        ConfigError: too few speakers or utterances for the protocol.
    """
    split = split_utterances(utterances, enrol_per_speaker=enrol_per_speaker, seed=seed)
    originals = [u.audio for u in utterances]
    if transform is None:
        anonymised, rtf = originals, None
        name = "original"
    else:
        anonymised, rtf = anonymise_all(transform, originals)
        name = transform.name
    anon = [Utterance(u.speaker, u.label, a) for u, a in zip(utterances, anonymised, strict=True)]
    trials = [anon[i] for i in split.trials]

    scores: dict[str, dict[str, float]] = {"embedding": {}, "gmm_ubm": {}}
    for kind, data in (("ignorant", originals), ("semi_informed", anonymised)):
        if kind == "semi_informed" and transform is None:
            scores["embedding"][kind] = scores["embedding"]["ignorant"]
            scores["gmm_ubm"][kind] = scores["gmm_ubm"]["ignorant"]
            continue
        embedding = EmbeddingVerifier()
        embedding.fit_background([Utterance(utterances[i].speaker, "", data[i]) for i in split.background])
        gmm = SpeakerVerifier(components, seed=seed)
        gmm.fit_background([data[i] for i in split.background])
        for speaker, idx in split.enrolment.items():
            embedding.enrol(speaker, [data[i] for i in idx])
            gmm.enrol(speaker, [data[i] for i in idx])
        scores["embedding"][kind] = embedding.eer(trials)
        scores["gmm_ubm"][kind] = gmm.eer(trials)

    train_idx = list(split.background) + [i for idx in split.enrolment.values() for i in idx]
    matched = DigitRecogniser()
    matched.fit([anon[i] for i in train_idx])
    on_original = DigitRecogniser()
    on_original.fit([utterances[i] for i in train_idx])
    return VoiceEvaluation(
        method=name,
        utterances=len(utterances),
        eer_ignorant=min(s["ignorant"] for s in scores.values()),
        eer_semi_informed=min(s["semi_informed"] for s in scores.values()),
        eer_by_attacker=scores,
        accuracy=matched.accuracy(trials),
        accuracy_original_model=on_original.accuracy(trials),
        real_time_factor=rtf,
    )


@dataclass(frozen=True)
class ImageEvaluation:
    """What redaction leaves of faces and of people (rates in [0, 1]).

    Attributes:
        faces_before: Faces the independent detector finds in the originals.
        face_recall_after: Fraction of those faces it still finds after redaction.
        people_before: People the device's people counter finds in the originals.
        people_recall_kept: Fraction of them it still finds after redaction.
        frames_per_second: Redaction speed (frames per second of one core's time).
    """

    method: str
    images: int
    faces_before: int
    face_recall_after: float
    people_before: int
    people_recall_kept: float | None
    frames_per_second: float

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return asdict(self)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    ax, ay = a[0] + a[2] / 2, a[1] + a[3] / 2
    return abs(ax - (b[0] + b[2] / 2)) < b[2] / 2 and abs(ay - (b[1] + b[3] / 2)) < b[3] / 2


def evaluate_images(frames: Sequence[Frame], redactor: FaceRedactor | None = None,
                    *, people: PeopleCounter | None = None,
                    truth: Sequence[Sequence[Box]] | None = None) -> ImageEvaluation:
    """Redact each frame and measure what an independent face detector and the people counter still find.

    With ``truth`` (the known face boxes of each frame), only detections on
    a true face count, so the detector's false alarms elsewhere in a frame
    are not mistaken for faces that survived; without it, every face the
    independent detector finds in the original counts.
    """
    redactor = redactor or FaceRedactor()
    people = people or PeopleCounter()
    detector = independent_face_detector()
    start = time.process_time()
    redacted = [redactor.apply(f)[0] for f in frames]
    fps = len(frames) / max(time.process_time() - start, 1e-9)
    faces = found = persons = kept = 0
    for i, (original, out) in enumerate(zip(frames, redacted, strict=True)):
        before = detector.detect(original)
        if truth is not None:
            before = [t for t in truth[i] if any(_overlaps(b, t) for b in before)]
        after = detector.detect(out)
        faces += len(before)
        found += sum(any(_overlaps(a, b) for a in after) for b in before)
        n = people.count(original)
        persons += n
        kept += min(n, people.count(out))
    return ImageEvaluation(
        method=redactor.name, images=len(frames), faces_before=faces,
        face_recall_after=found / faces if faces else 0.0, people_before=persons,
        people_recall_kept=kept / persons if persons else None, frames_per_second=fps,
    )
