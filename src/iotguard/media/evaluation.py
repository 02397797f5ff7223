"""Evaluation protocols: how well a media transform hides people and keeps utility.

:func:`evaluate_voice` runs the built-in attacker (:mod:`iotguard.media.attacker`)
against one voice transform on a labelled set of utterances; :func:`evaluate_images`
checks face redaction with independent detectors, a re-identification attacker
(:mod:`iotguard.media.reidentify`) and a body detector. They return the figures
``iotguard media evaluate`` and ``bench/media.py`` report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from iotguard.errors import ConfigError
from iotguard.media.attacker import (
    Cepstra,
    DigitRecogniser,
    EmbeddingVerifier,
    SpeakerVerifier,
    Utterance,
    VoiceSplit,
    shared_cepstra,
    split_utterances,
)
from iotguard.media.audio import Audio
from iotguard.media.image import Box, FaceRedactor, Frame, PeopleCounter, independent_face_detector
from iotguard.media.reidentify import FaceMatcher, crop
from iotguard.media.voice import VoiceTransform

__all__ = [
    "VOICE_ATTACKERS",
    "ImageEvaluation",
    "VoiceEvaluation",
    "anonymise_all",
    "evaluate_images",
    "evaluate_voice",
]

VOICE_ATTACKERS = ("embedding", "embedding_all_frames", "embedding_all_frames_no_onset", "gmm_ubm")
"""The speaker-verification back ends :func:`evaluate_voice` runs; the lowest EER of them is reported."""

ONSET_SECONDS = 0.2
"""Start of each utterance the ``embedding_all_frames_no_onset`` back end leaves out (ADR 0907, amendment)."""


@dataclass(frozen=True)
class VoiceEvaluation:
    """Privacy and utility of one voice transform (rates in [0, 1]).

    Attributes:
        method: Transform name (``"original"`` for no transform).
        eer_ignorant: EER of an attacker enrolled on original voices, tested on
            transformed ones (the lowest over the back ends).
        eer_semi_informed: EER of an attacker who did everything on transformed
            voices (the lowest over the back ends).
        eer_by_attacker: Each back end's EERs, by :data:`VOICE_ATTACKERS` name
            (``embedding``: LDA on the speech frames' statistics,
            ``embedding_all_frames``: the same on all frames,
            ``embedding_all_frames_no_onset``: on all frames but each utterance's
            first 200 ms, ``gmm_ubm``).
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


def _attack(utterances: Sequence[Utterance], data: Sequence[Audio], split: VoiceSplit, trials: Sequence[Utterance],
            *, components: int, seed: int, cepstra: Cepstra) -> dict[str, float]:
    """Each back end's EER: background and enrolment from ``data`` (original or anonymised), scored on ``trials``;
    every back end reads the frames of one :func:`~iotguard.media.attacker.shared_cepstra`."""
    background = [Utterance(utterances[i].speaker, "", data[i]) for i in split.background]
    embeddings = {"embedding": EmbeddingVerifier(speech_only=True, cepstra=cepstra),
                  "embedding_all_frames": EmbeddingVerifier(speech_only=False, cepstra=cepstra),
                  "embedding_all_frames_no_onset": EmbeddingVerifier(speech_only=False, skip_onset=ONSET_SECONDS,
                                                                     cepstra=cepstra)}
    gmm = SpeakerVerifier(components, seed=seed, cepstra=cepstra)
    gmm.fit_background([u.audio for u in background])
    for verifier in embeddings.values():
        verifier.fit_background(background)
    for speaker, idx in split.enrolment.items():
        gmm.enrol(speaker, [data[i] for i in idx])
        for verifier in embeddings.values():
            verifier.enrol(speaker, [data[i] for i in idx])
    out = {name: verifier.eer(trials) for name, verifier in embeddings.items()}
    out["gmm_ubm"] = gmm.eer(trials)
    return out


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

    scores: dict[str, dict[str, float]] = {attacker: {} for attacker in VOICE_ATTACKERS}
    cepstra = shared_cepstra()  # the trials are attacked twice, every utterance by four back ends
    for kind, data in (("ignorant", originals), ("semi_informed", anonymised)):
        if kind == "semi_informed" and transform is None:
            for by_kind in scores.values():
                by_kind[kind] = by_kind["ignorant"]
            continue
        for attacker, eer in _attack(utterances, data, split, trials, components=components, seed=seed,
                                     cepstra=cepstra).items():
            scores[attacker][kind] = eer

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
    """What redaction leaves of faces, identities and people (rates in [0, 1]).

    Attributes:
        faces_before: Faces the independent detectors find in the originals (the larger count).
        face_recall_after: Fraction of those faces still found after redaction (the worse detector).
        face_recall_by_detector: The same per independent detector (``frontalface_alt2``, ``frontalface_default``).
        faces_by_detector: Per independent detector, the faces it finds in the
            originals (``total``) and how many of them it still finds after
            redaction (``found``), for confidence intervals.
        people_before: People the body detector finds in the originals (with
            annotations: annotated people it finds).
        people_recall_kept: Its recall on redacted frames over its recall on the
            originals (without annotations: the fraction of its original
            detections it still makes).
        people_annotated: Annotated people (``None`` without annotations).
        people_recall_original: Body-detector recall on the originals against the annotations.
        people_recall_redacted: The same on redacted frames.
        reid_top1_before: Top-1 re-identification of the attacker on original faces.
        reid_top1_after: The same on the redacted frames (chance is ``1 / reid_gallery``).
        reid_gallery: Identities in the attacker's gallery.
        frames_per_second: Redaction speed (frames per second of one core's time).
    """

    method: str
    images: int
    faces_before: int
    face_recall_after: float
    face_recall_by_detector: dict[str, float]
    faces_by_detector: dict[str, dict[str, int]]
    people_before: int
    people_recall_kept: float | None
    people_annotated: int | None
    people_recall_original: float | None
    people_recall_redacted: float | None
    reid_top1_before: float | None
    reid_top1_after: float | None
    reid_gallery: int
    frames_per_second: float
    block: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return asdict(self)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether the centre of ``a`` lies inside ``b``."""
    ax, ay = a[0] + a[2] / 2, a[1] + a[3] / 2
    return abs(ax - (b[0] + b[2] / 2)) < b[2] / 2 and abs(ay - (b[1] + b[3] / 2)) < b[3] / 2


def _matches(a: Box, b: Box) -> bool:
    return _overlaps(a, b) or _overlaps(b, a)


_EVAL_CASCADES = ("frontalface_alt2", "frontalface_default")


def _face_recall(frames: Sequence[Frame], redacted: Sequence[Frame],
                 truth: Sequence[Sequence[Box]] | None) -> tuple[dict[str, dict[str, int]], list[Box | None]]:
    counts: dict[str, dict[str, int]] = {}
    faces: list[Box | None] = [None] * len(frames)
    for cascade in _EVAL_CASCADES:
        detector = independent_face_detector(cascade)
        total = found = 0
        for i, (original, out) in enumerate(zip(frames, redacted, strict=True)):
            before = detector.detect(original)
            if truth is not None:
                before = [t for t in truth[i] if any(_overlaps(b, t) for b in before)]
            if before and faces[i] is None:
                faces[i] = max(before, key=lambda b: b[2] * b[3])
            after = detector.detect(out)
            total += len(before)
            found += sum(any(_overlaps(a, b) for a in after) for b in before)
        counts[cascade] = {"found": found, "total": total}
    return counts, faces


def _reidentification(frames: Sequence[Frame], redacted: Sequence[Frame], faces: Sequence[Box | None],
                      gallery: Sequence[Frame] | None,
                      identities: Sequence[int] | None) -> tuple[float | None, float | None, int]:
    """Top-1 of the attacker before and after redaction on the frames where a face is known."""
    shown = [(i, f) for i, f in enumerate(faces) if f is not None]
    if gallery is None:
        # No enrolled photos: the gallery is each frame's own face, shifted by a tenth of its size, so that
        # "before" is a near-copy match (an upper bound) and "after" asks whether redaction still links.
        gallery = [crop(frames[i], (x + w // 10, y + h // 10, w, h)) for i, (x, y, w, h) in shown]
        ids = list(range(len(shown)))
    else:
        if identities is None or len(identities) != len(frames):
            raise ConfigError("re-identification needs one gallery identity per frame")
        ids = [identities[i] for i, _ in shown]
    if len(gallery) < 2 or not shown:
        return None, None, len(gallery)
    matcher = FaceMatcher()
    matcher.enrol(gallery)
    before = matcher.top1([crop(frames[i], box) for i, box in shown], ids)
    after = matcher.top1([crop(redacted[i], box) for i, box in shown], ids)
    return before, after, matcher.size


def _people_recall(frames: Sequence[Frame], redacted: Sequence[Frame], people: PeopleCounter,
                   truth: Sequence[Sequence[Box]] | None) -> tuple[int, float | None, float | None, float | None]:
    """(people found before, kept, recall on originals, recall on redacted)."""
    before = kept = annotated = found_original = found_redacted = 0
    for i, (original, out) in enumerate(zip(frames, redacted, strict=True)):
        a, b = people.boxes(original), people.boxes(out)
        if truth is None:
            before += len(a)
            kept += sum(any(_matches(x, y) for y in b) for x in a)
            continue
        annotated += len(truth[i])
        found_original += sum(any(_matches(x, t) for x in a) for t in truth[i])
        found_redacted += sum(any(_matches(x, t) for x in b) for t in truth[i])
    if truth is None:
        return before, kept / before if before else None, None, None
    if not annotated:
        return 0, None, None, None
    r0, r1 = found_original / annotated, found_redacted / annotated
    return found_original, r1 / r0 if r0 else None, r0, r1


def evaluate_images(frames: Sequence[Frame], redactor: FaceRedactor | None = None,
                    *, people: PeopleCounter | None = None,
                    truth: Sequence[Sequence[Box]] | None = None,
                    people_truth: Sequence[Sequence[Box]] | None = None,
                    gallery: Sequence[Frame] | None = None,
                    identities: Sequence[int] | None = None) -> ImageEvaluation:
    """Redact each frame and measure what independent face detectors, a re-identification attacker and a
    body detector still find.

    Args:
        frames: Original frames.
        redactor: The transform under test (default: :class:`FaceRedactor`).
        people: The people detector run on originals and redacted frames
            (default: HOG bodies only, which does not depend on faces).
        truth: Known face boxes of each frame; only detections on a true face
            count, so a detector's false alarms are not mistaken for faces
            that survived. Without it, every face a detector finds counts.
        people_truth: Annotated person boxes of each frame (recall is then
            measured against them).
        gallery: The attacker's enrolled face photos, one per identity, and
        identities: the gallery index of the person in each frame. Without a
            gallery, each frame's own face (shifted) is enrolled.

    Raises:
        ConfigError: a gallery without one identity per frame.
    """
    redactor = redactor or FaceRedactor()
    people = people or PeopleCounter(faces=None)
    start = time.process_time()
    redacted = [redactor.apply(f)[0] for f in frames]
    fps = len(frames) / max(time.process_time() - start, 1e-9)
    counts, face_boxes = _face_recall(frames, redacted, truth)
    by_detector = {name: c["found"] / c["total"] if c["total"] else 0.0 for name, c in counts.items()}
    top1_before, top1_after, gallery_size = _reidentification(frames, redacted, face_boxes, gallery, identities)
    persons, kept, recall_original, recall_redacted = _people_recall(frames, redacted, people, people_truth)
    return ImageEvaluation(
        method=redactor.name, images=len(frames), faces_before=max(c["total"] for c in counts.values()),
        face_recall_after=max(by_detector.values()), face_recall_by_detector=by_detector,
        faces_by_detector=counts,
        people_before=persons, people_recall_kept=kept,
        people_annotated=None if people_truth is None else sum(len(t) for t in people_truth),
        people_recall_original=recall_original, people_recall_redacted=recall_redacted,
        reid_top1_before=top1_before, reid_top1_after=top1_after, reid_gallery=gallery_size,
        frames_per_second=fps, block=redactor.block,
    )
