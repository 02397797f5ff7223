"""The built-in attacker and utility meter for voice anonymisation.

An anonymiser that was never attacked is only a claim, so iotguard ships
its own attacker, trained inside the tool on the data it is evaluated on:

* **Speaker verification** by four back ends, and the strongest one counts:
  an utterance embedding (mean and standard deviation of MFCC + delta
  frames) projected by linear discriminant analysis trained on labelled
  background speech and scored by cosine similarity against each speaker's
  mean enrolment embedding (an i-vector/PLDA-style back end in miniature),
  once over the speech frames (MFCC c0 above the utterance's 30th
  percentile), once over all frames, because a transform that flattens
  the loudness makes c0 stop marking speech and the cut then discards
  frames that identify the speaker (ADR 0907), and once over all frames
  but each utterance's first 200 ms, where a transform's running
  normalisation has not settled (ADR 0907, amendment);
  and a GMM-UBM (Reynolds et al., 2000) on MFCC +
  delta features with per-utterance mean/variance normalisation: a
  universal background model from background utterances, one MAP-adapted
  model per enrolled speaker, log-likelihood-ratio scores, and the equal
  error rate (EER) over all target and non-target trials. The *ignorant*
  attacker enrols and trains its background on original voices and tests
  on anonymised ones; the *semi-informed* attacker knows the transform and
  does everything on voices anonymised with it (fresh per-utterance draws).
* **Utility**: a spoken-digit recogniser (MFCC means over six time
  segments plus utterance statistics, standardised, RBF support vector machine) trained and tested on
  disjoint utterances; accuracy is reported for a recogniser trained on
  the same kind of audio it is tested on (what a service receiving only
  anonymised audio would train on) and for one trained on original audio.

Pure computation over arrays: no files are read here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from iotguard.errors import ConfigError
from iotguard.media.audio import Audio, mfcc

__all__ = [
    "Cepstra",
    "DigitRecogniser",
    "EmbeddingVerifier",
    "SpeakerVerifier",
    "Utterance",
    "VoiceSplit",
    "equal_error_rate",
    "shared_cepstra",
    "speaker_embedding",
    "split_utterances",
    "utterance_features",
]

Features = npt.NDArray[np.float64]
#: An utterance's MFCC + delta frames (``mfcc`` with its defaults), or the same from a cache.
Cepstra = Callable[[Audio], Features]


def shared_cepstra() -> Cepstra:
    """:func:`~iotguard.media.audio.mfcc` computed once per audio object while the returned function lives.

    The back ends attacking the same utterances take them from one of these
    (every back end reads the same frames). Each entry holds its audio, so an
    object id is never reused while its frames are cached.
    """
    seen: dict[int, tuple[Audio, Features]] = {}

    def cepstra(audio: Audio) -> Features:
        hit = seen.get(id(audio))
        if hit is None or hit[0] is not audio:
            hit = seen[id(audio)] = (audio, mfcc(audio))
        return hit[1]

    return cepstra


@dataclass(frozen=True)
class Utterance:
    """One labelled recording: who spoke it and what was said."""

    speaker: str
    label: str
    audio: Audio


def utterance_features(audio: Audio, cepstra: Cepstra = mfcc) -> Features:
    """Frame features for speaker modelling: MFCC + deltas of the speech frames, normalised per utterance."""
    f = _cut(cepstra(audio))
    out: Features = (f - f.mean(axis=0)) / (f.std(axis=0) + 1e-8)
    return out


def equal_error_rate(target: Sequence[float], nontarget: Sequence[float]) -> float:
    """Equal error rate of verification scores (higher score = more likely the same speaker).

    Raises:
        ConfigError: no target or no non-target scores.
    """
    t, n = np.asarray(target, dtype=float), np.asarray(nontarget, dtype=float)
    if not len(t) or not len(n):
        raise ConfigError("EER needs target and non-target trials")
    thresholds = np.sort(np.concatenate([t, n]))
    miss = np.searchsorted(np.sort(t), thresholds, side="left") / len(t)
    false_alarm = 1.0 - np.searchsorted(np.sort(n), thresholds, side="left") / len(n)
    i = int(np.argmin(np.abs(miss - false_alarm)))
    return float((miss[i] + false_alarm[i]) / 2)


class SpeakerVerifier:
    """GMM-UBM speaker verification.

    Args:
        components: Gaussians in the background model.
        relevance: MAP relevance factor for adapting the means.
        seed: Seed of the background model's initialisation.
        cepstra: Where an utterance's frames come from (:func:`shared_cepstra` to share them).
    """

    def __init__(self, components: int = 64, relevance: float = 16.0, seed: int = 0,
                 cepstra: Cepstra = mfcc) -> None:
        self.cepstra = cepstra
        self.components = components
        self.relevance = relevance
        self.seed = seed
        self._ubm: GaussianMixture | None = None
        self._speakers: dict[str, GaussianMixture] = {}

    def fit_background(self, utterances: Sequence[Audio]) -> None:
        """Train the universal background model.

        Raises:
            ConfigError: no background utterances.
        """
        if not utterances:
            raise ConfigError("the background model needs utterances")
        x = np.vstack([utterance_features(a, self.cepstra) for a in utterances])
        ubm = GaussianMixture(self.components, covariance_type="diag", max_iter=50, reg_covar=1e-3,
                              random_state=self.seed)
        with warnings.catch_warnings():
            # Fifty EM steps are enough for a background model; not converging further is not a failure.
            warnings.simplefilter("ignore", ConvergenceWarning)
            ubm.fit(x)
        self._ubm = ubm

    def enrol(self, speaker: str, utterances: Sequence[Audio]) -> None:
        """MAP-adapt the background model's means to a speaker's enrolment utterances.

        Raises:
            ConfigError: the background model is not trained or there is nothing to enrol.
        """
        if self._ubm is None or not utterances:
            raise ConfigError("train the background model and give enrolment utterances first")
        x = np.vstack([utterance_features(a, self.cepstra) for a in utterances])
        gamma = self._ubm.predict_proba(x)
        n = gamma.sum(axis=0)
        first = gamma.T @ x
        weight = (n / (n + self.relevance))[:, None]
        model = copy.copy(self._ubm)
        model.means_ = weight * first / np.maximum(n, 1e-10)[:, None] + (1.0 - weight) * self._ubm.means_
        self._speakers[speaker] = model

    def score(self, speaker: str, audio: Audio) -> float:
        """Average log-likelihood ratio of ``audio`` under the speaker's model versus the background.

        Raises:
            ConfigError: the speaker is not enrolled.
        """
        model = self._speakers.get(speaker)
        if model is None or self._ubm is None:
            raise ConfigError(f"speaker {speaker!r} is not enrolled")
        x = utterance_features(audio, self.cepstra)
        return float(np.mean(model.score_samples(x) - self._ubm.score_samples(x)))

    def eer(self, trials: Sequence[Utterance]) -> float:
        """EER over every (test utterance, enrolled speaker) pair."""
        target: list[float] = []
        nontarget: list[float] = []
        for u in trials:
            x = utterance_features(u.audio, self.cepstra)
            background = self._ubm.score_samples(x) if self._ubm is not None else None
            for speaker, model in self._speakers.items():
                s = float(np.mean(model.score_samples(x) - background)) if background is not None else 0.0
                (target if speaker == u.speaker else nontarget).append(s)
        return equal_error_rate(target, nontarget)


_MIN_FRAMES = 5
"""Fewest frames an utterance's statistics are taken over before a frame selection falls back to all."""


def _cut(f: Features) -> Features:
    energy = f[:, 0]
    keep = energy > np.percentile(energy, 30)
    return f[keep] if keep.sum() >= _MIN_FRAMES else f


def speaker_embedding(audio: Audio, *, speech_only: bool = True, skip_onset: float = 0.0,
                      cepstra: Cepstra = mfcc) -> Features:
    """Utterance-level statistics: mean and standard deviation of MFCC + delta frames.

    Args:
        audio: The utterance.
        speech_only: Keep only the frames whose MFCC c0 is above the
            utterance's 30th percentile (a speech/silence cut); ``False``
            uses every frame.
        skip_onset: Seconds at the start of the utterance whose frames are
            dropped first (frames start every 10 ms). An utterance that would
            keep fewer than five frames keeps them all instead.
        cepstra: Where the frames come from.
    """
    f = cepstra(audio)
    skip = round(skip_onset * audio.rate) // int(0.010 * audio.rate)
    if skip > 0 and len(f) - skip >= _MIN_FRAMES:
        f = f[skip:]
    if speech_only:
        f = _cut(f)
    return np.concatenate([f.mean(axis=0), f.std(axis=0)])


class EmbeddingVerifier:
    """Speaker verification by LDA-projected utterance statistics and cosine scoring.

    The background utterances must carry speaker labels (the attacker's own
    labelled data); the projection keeps the directions that separate
    speakers and discards those that vary within one speaker.

    Args:
        speech_only: Compute the statistics over the speech frames only (see
            :func:`speaker_embedding`); ``False`` keeps every frame, which is
            the stronger attacker on audio whose loudness no longer follows
            the speech.
        skip_onset: Seconds dropped at the start of each utterance (see
            :func:`speaker_embedding`); 0.2 with ``speech_only=False`` is the
            stronger attacker on output whose running normalisation settles
            during the first frames.
        cepstra: Where an utterance's frames come from (:func:`shared_cepstra` to share them).
    """

    def __init__(self, *, speech_only: bool = True, skip_onset: float = 0.0, cepstra: Cepstra = mfcc) -> None:
        self.cepstra = cepstra
        self.speech_only = speech_only
        self.skip_onset = skip_onset
        self._scaler = StandardScaler()
        self._lda = LinearDiscriminantAnalysis()
        self._speakers: dict[str, Features] = {}
        self._fitted = False

    def fit_background(self, utterances: Sequence[Utterance]) -> None:
        """Learn the projection from labelled background utterances.

        Raises:
            ConfigError: fewer than two background speakers.
        """
        if len({u.speaker for u in utterances}) < 2:
            raise ConfigError("the background needs at least two speakers")
        x = np.stack([self._statistics(u.audio) for u in utterances])
        self._lda.fit(self._scaler.fit_transform(x), [u.speaker for u in utterances])
        self._fitted = True

    def _statistics(self, audio: Audio) -> Features:
        return speaker_embedding(audio, speech_only=self.speech_only, skip_onset=self.skip_onset,
                                 cepstra=self.cepstra)

    def _embed(self, audio: Audio) -> Features:
        x = self._statistics(audio)[None, :]
        v: Features = self._lda.transform(self._scaler.transform(x))[0]
        return v / (np.linalg.norm(v) + 1e-12)

    def enrol(self, speaker: str, utterances: Sequence[Audio]) -> None:
        """A speaker's model: the normalised mean of their enrolment embeddings.

        Raises:
            ConfigError: the projection is not trained or there is nothing to enrol.
        """
        if not self._fitted or not utterances:
            raise ConfigError("train the background projection and give enrolment utterances first")
        m = np.mean([self._embed(a) for a in utterances], axis=0)
        self._speakers[speaker] = m / (np.linalg.norm(m) + 1e-12)

    def eer(self, trials: Sequence[Utterance]) -> float:
        """EER over every (test utterance, enrolled speaker) pair."""
        target: list[float] = []
        nontarget: list[float] = []
        for u in trials:
            v = self._embed(u.audio)
            for speaker, model in self._speakers.items():
                (target if speaker == u.speaker else nontarget).append(float(v @ model))
        return equal_error_rate(target, nontarget)


def _segment_stats(audio: Audio, segments: int = 6) -> Features:
    f = mfcc(audio, coefficients=13, deltas=False)
    parts = np.array_split(f, segments) if len(f) >= segments else [f] * segments
    means = [p.mean(axis=0) for p in parts]
    return np.concatenate([*means, f.mean(axis=0), f.std(axis=0), [np.log(len(f))]])


class DigitRecogniser:
    """Spoken-content recogniser used to measure the utility left after anonymisation."""

    def __init__(self) -> None:
        self._model = make_pipeline(StandardScaler(), SVC(C=10.0))
        self.fitted = False

    def fit(self, utterances: Sequence[Utterance]) -> None:
        """Train on labelled utterances."""
        x = np.stack([_segment_stats(u.audio) for u in utterances])
        self._model.fit(x, [u.label for u in utterances])
        self.fitted = True

    def predict(self, audio: Audio) -> str:
        """The label the recogniser hears in ``audio``.

        Raises:
            ConfigError: not trained.
        """
        if not self.fitted:
            raise ConfigError("the recogniser is not trained")
        return str(self._model.predict(_segment_stats(audio)[None, :])[0])

    def accuracy(self, utterances: Sequence[Utterance]) -> float:
        """Fraction of utterances recognised correctly."""
        if not utterances:
            raise ConfigError("accuracy needs utterances")
        x = np.stack([_segment_stats(u.audio) for u in utterances])
        predicted = self._model.predict(x)
        return float(np.mean([p == u.label for p, u in zip(predicted, utterances, strict=True)]))


@dataclass(frozen=True)
class VoiceSplit:
    """Disjoint utterance sets of one evaluation: background, enrolment, trials."""

    background: tuple[int, ...]
    enrolment: dict[str, tuple[int, ...]]
    trials: tuple[int, ...]


def split_utterances(utterances: Sequence[Utterance], *, enrol_per_speaker: int = 10,
                     background_fraction: float = 0.3, seed: int = 0) -> VoiceSplit:
    """Split utterance indices into background, per-speaker enrolment and trial sets.

    Raises:
        ConfigError: fewer than two speakers, or a speaker with too few utterances.
    """
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[int]] = {}
    for i, u in enumerate(utterances):
        by_speaker.setdefault(u.speaker, []).append(i)
    if len(by_speaker) < 2:
        raise ConfigError("speaker verification needs at least two speakers")
    background: list[int] = []
    enrol: dict[str, tuple[int, ...]] = {}
    trials: list[int] = []
    for speaker, idx in sorted(by_speaker.items()):
        order = [idx[j] for j in rng.permutation(len(idx))]
        nb = int(len(order) * background_fraction)
        if len(order) - nb < enrol_per_speaker + 1:
            raise ConfigError(f"speaker {speaker!r} has too few utterances for enrolment and trials")
        background += order[:nb]
        enrol[speaker] = tuple(order[nb : nb + enrol_per_speaker])
        trials += order[nb + enrol_per_speaker :]
    return VoiceSplit(tuple(background), enrol, tuple(trials))
