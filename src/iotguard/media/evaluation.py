"""Evaluation protocols: how well a media transform hides people and keeps utility.

:func:`evaluate_voice` runs the built-in attacker (:mod:`iotguard.media.attacker`)
against one voice transform on a labelled set of utterances and returns the
figures ``iotguard media evaluate voice`` and ``bench/media.py`` report.
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
from iotguard.media.voice import VoiceTransform

__all__ = ["VoiceEvaluation", "anonymise_all", "evaluate_voice"]


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
