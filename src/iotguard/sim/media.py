"""Simulated microphone: formant-synthesised speakers saying spoken digits.

Each speaker has a vocal-tract length (formants scale with it), a pitch
and a spectral tilt; each digit is a fixed sequence of vowel targets. A
source-filter synthesiser (glottal pulse train with jitter, cascaded
second-order resonators) turns them into 8 kHz audio. It gives tests and
the device simulator labelled speech of known speakers without shipping
recordings of real people.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from iotguard.media.attacker import Utterance
from iotguard.media.audio import Audio

__all__ = ["SyntheticSpeaker", "synthetic_corpus", "synthetic_utterance"]

# Vowel formant targets (F1, F2, F3 in Hz) of an adult male vocal tract.
_VOWELS = {
    "i": (270, 2290, 3010), "e": (530, 1840, 2480), "a": (730, 1090, 2440),
    "o": (570, 840, 2410), "u": (300, 870, 2240), "ae": (660, 1720, 2410),
}
# Digits as sequences of vowel targets (a caricature of their pronunciation).
_DIGITS = {
    "0": ("i", "e", "o"), "1": ("a", "u", "a"), "2": ("u", "u", "u"), "3": ("i", "i", "i"),
    "4": ("o", "o", "a"), "5": ("a", "i", "e"), "6": ("i", "ae", "e"), "7": ("e", "a", "e"),
    "8": ("e", "i", "i"), "9": ("a", "i", "a"),
}


@dataclass(frozen=True)
class SyntheticSpeaker:
    """A synthetic voice: vocal-tract scale, pitch in Hz and spectral tilt."""

    name: str
    tract_scale: float
    f0: float
    tilt: float


def synthetic_utterance(speaker: SyntheticSpeaker, digit: str, rng: np.random.Generator,
                        *, rate: int = 8000) -> Audio:
    """One utterance of ``digit`` by ``speaker`` (about 0.45 s, varying by utterance)."""
    targets = [_VOWELS[v] for v in _DIGITS[digit]]
    n = int(rate * rng.uniform(0.35, 0.55))
    t = np.linspace(0, len(targets) - 1, n)
    formants = np.stack([np.interp(t, np.arange(len(targets)), [f[k] for f in targets]) for k in range(3)])
    formants = formants * speaker.tract_scale
    pitch = speaker.f0 * (1.0 + 0.08 * np.sin(np.linspace(0, np.pi, n))) * rng.uniform(0.95, 1.05)
    phase = np.cumsum(pitch / rate)
    pulses = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(float)
    pulses += 0.02 * rng.standard_normal(n)
    source = lfilter([1.0], [1.0, -speaker.tilt], pulses)
    out = np.zeros(n)
    block = 80
    states = [np.zeros(2) for _ in range(3)]
    for s in range(0, n, block):
        seg = source[s : s + block]
        for k in range(3):
            freq = float(formants[k, s])
            bandwidth = 60.0 + 40.0 * k
            r = np.exp(-np.pi * bandwidth / rate)
            a = [1.0, -2 * r * np.cos(2 * np.pi * freq / rate), r * r]
            seg, states[k] = lfilter([1.0 - r], a, seg, zi=states[k])
        out[s : s + block] = seg
    envelope = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.03 * rate))
    out = out * envelope
    out = 0.3 * out / (np.max(np.abs(out)) + 1e-12)
    return Audio(out + 0.002 * rng.standard_normal(n), rate)


def synthetic_corpus(speakers: int = 4, per_digit: int = 6, *, seed: int = 0,
                     digits: str = "0123456789") -> list[Utterance]:
    """Labelled utterances of distinct synthetic speakers, ``per_digit`` of each digit each."""
    rng = np.random.default_rng(seed)
    voices = [SyntheticSpeaker(f"s{i}", float(rng.uniform(0.85, 1.2)), float(rng.uniform(90, 230)),
                               float(rng.uniform(0.7, 0.97))) for i in range(speakers)]
    return [Utterance(v.name, d, synthetic_utterance(v, d, rng)) for v in voices for d in digits
            for _ in range(per_digit)]
