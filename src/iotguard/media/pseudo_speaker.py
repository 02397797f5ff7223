"""``pseudo-speaker``: voice conversion to a random pseudo-speaker that wanders within the utterance.

iotguard's second transform (ADR 0901), built on the same LPC analysis and
overlap-add stream as :mod:`iotguard.media.voice` (20 ms frames every 10 ms,
so no output sample waits more than 20 ms). Against an attacker who enrols
on voices anonymised with the same transform, what matters is how much
speaker information survives *after* the attacker has learnt which
directions the transform randomises. This transform therefore removes more
of the speaker before it adds randomness, and spreads its randomness over
more directions and over time:

* **Speaker normalisation of mean and spread.** Each frame's spectral
  envelope (LPC, as a real cepstrum) has the utterance's running
  energy-weighted mean subtracted and its running per-coefficient spread
  scaled to a generic profile, so neither a speaker's long-term timbre nor
  how far their articulation moves it survives (the randomised vocoder
  removes only the mean).
* **Per-utterance draws** from the OS CSPRNG: a bilinear (all-pass)
  frequency warp, the warp used for vocal-tract-length normalisation, a
  pseudo-speaker timbre (a random long-term cepstrum), a dynamic-range
  factor, a target pitch and an output level.
* **Within-utterance wander.** The pseudo-speaker's timbre and level drift
  along an Ornstein-Uhlenbeck process (a random walk pulled back to the
  drawn values, time constant ``wander_tau``), so the draws are not even
  constant inside one utterance and the attacker cannot average them out
  over the frames of a recording.
* **Whispered excitation** (version 2, ADR 0903): the residual (the
  speaker's glottal source) is discarded and every frame is excited by
  white noise, so neither pitch, voicing decisions nor intonation survive.
  With ``whisper=False`` the randomised vocoder's pulse train at the drawn
  target pitch is used instead (version 1's source).
* **A flat loudness contour** (version 2): every frame leaves at the drawn,
  wandering level whatever its input loudness (``loudness_contour=0``), so
  the rhythm of the energy contour, which alone identifies FSDD's speakers
  at about 25 % EER (ADR 0902), does not survive as loudness; only exact
  digital silence stays silent. ``loudness_contour=1`` keeps the input's
  contour relative to its running loudness (version 1).

* **A coarse, jittered articulation trajectory** (version 3, ADR 0905):
  the speaker-normalised cepstral trajectory is low-passed at 10 Hz per
  coefficient (the phonetic modulations stay, the fastest go), rounded to a
  grid of twice the generic spread whose offset is drawn per utterance and
  per coefficient (dither), and given white per-frame noise whose amplitude
  is drawn per utterance. Segment averages over a few frames keep the large
  differences between words; an attacker's utterance statistics lose the
  small differences between speakers. Version 3 draws no pseudo-speaker
  timbre, timbre wander or dynamics factor by default (they cost the words
  as much as the speaker, ADR 0904); :meth:`PseudoSpeaker.version_2` builds
  the previous version.

* **A rank-equalised trajectory** (version 4, ADR 0906): each cepstral
  coefficient is also mapped through its running empirical distribution in
  the utterance (its rank among the utterance's frames so far, as a quantile
  of the generic Gaussian), and half of that replaces the mean-normalised
  value. The shape of each coefficient's distribution (how a speaker skews,
  compresses or stretches an articulation), which mean and spread
  normalisation leave, is what the ranks remove. Version 4 normalises the
  mean only (the spread's gain bought no privacy once the ranks are in and
  cost accuracy), draws the jitter amplitude up to 3 instead of 4 and keeps
  the level constant within an utterance; :meth:`PseudoSpeaker.version_3`
  builds version 3.

Per-utterance draws are never reported; :meth:`PseudoSpeaker.params`
records the ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter
from scipy.special import ndtri

from iotguard.errors import ConfigError
from iotguard.media.voice import (
    VoiceStream,
    _cepstral_filter,
    _energy_match,
    _Excitation,
    _fir,
    _lpc,
    _RandomisedVoice,
)

__all__ = ["PseudoSpeaker"]

Samples = npt.NDArray[np.float64]
Frames = npt.NDArray[np.float64]

#: Frames ranked in one vectorised pass of the rank equalisation (bounds its temporary arrays).
_RANK_CHUNK = 64


def _bilinear_map(bins: int, warp: float) -> tuple[npt.NDArray[np.int64], Samples]:
    """Source bin and interpolation weight of each output bin under a bilinear frequency warp."""
    w = np.linspace(0.0, np.pi, bins)
    source = w + 2.0 * np.arctan(-warp * np.sin(w) / (1.0 + warp * np.cos(w)))
    pos = source / np.pi * (bins - 1)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, bins - 2)
    return i0, np.clip(pos - i0, 0.0, 1.0)


@dataclass
class _Draws:
    """One utterance's random pseudo-speaker and the stream's running state."""

    source: _Excitation  # the synthetic excitation (its generator: noise and pulse jitter)
    wander_rng: np.random.Generator  # the drift: a separate stream, so batching does not change the output
    warp: float
    timbre: Samples
    dynamics: float
    level: float
    wander: Samples  # current Ornstein-Uhlenbeck offset: cepstrum then log level
    jitter_rng: np.random.Generator  # the per-frame jitter: its own stream, so batching does not change it
    jitter_amplitude: float
    grid_offset: Samples  # the quantisation grid's dither, in steps, per coefficient
    lowpassed: Samples | None = None  # the low-passed trajectory's last frame
    ranked: Frames | None = None  # the cepstra of the last frames, the rank equalisation's window
    csum: Samples | None = None
    c2sum: Samples | None = None
    wsum: float = 0.0
    loud: float = 0.0
    warp_map: dict[int, tuple[npt.NDArray[np.int64], Samples]] = field(default_factory=dict)


@dataclass(frozen=True)
class PseudoSpeaker(_RandomisedVoice):
    """Voice conversion to a random, wandering pseudo-speaker (``pseudo-speaker``).

    Args:
        warp_range: Range of the per-utterance bilinear warp factor (0: none;
            +-0.1 is about +-20 % vocal-tract length).
        dynamics_range: Range of the per-utterance factor on the envelope's
            movement around its mean.
        wander: Standard deviation of the timbre's drift inside the utterance.
        level_wander: Standard deviation of the output level's drift (natural log).
        wander_tau: Time constant of the drift in seconds.
        whisper: Excite every frame with noise (no pitch, voicing or
            intonation); ``False`` uses the pulse train at the drawn pitch.
        loudness_contour: Exponent on each frame's loudness relative to the
            running loudness (0: flat, every frame at the drawn level; 1: the
            input's contour).
        trajectory_lowpass: Corner in Hz of the one-pole low-pass on each
            coefficient's normalised trajectory (0: off).
        quantisation_step: Grid step of the normalised trajectory, in units of
            the generic spread ``0.5/(1+k)`` of coefficient ``k`` (0: off).
        dither: Draw the grid's offset per utterance and per coefficient
            (uniform within half a step either way); ``False``: a grid through 0.
        jitter: Largest amplitude of the per-frame white noise on the
            trajectory, in units of ``0.5/(1+k)**1.5``; the amplitude is drawn
            per utterance, uniform in ``[0, jitter]`` (0: off).
        spread_normalisation: Scale each coefficient's running spread to the
            generic one (versions 1-3); ``False`` removes the running mean only.
        rank_equalisation: Share of each coefficient's normalised value
            replaced by its rank among the utterance's frames so far, as a
            generic-Gaussian quantile times the generic spread (0: off).
        equalisation_window: Seconds of past frames the rank is taken among
            (bounds memory and time on long utterances).
        (pitch, intonation, quefrency, timbre and seed: :class:`_RandomisedVoice`)

    The rank equalisation on or the spread normalisation off makes this version 4; else the
    low-pass, the grid or the jitter on makes it version 3; with all of them off it runs
    version 2's steps (with the timbre, wander and dynamics given).
    """

    f0_range: tuple[float, float] = (90.0, 240.0)
    timbre_spread: float = 0.0
    warp_range: tuple[float, float] = (0.0, 0.0)
    dynamics_range: tuple[float, float] = (1.0, 1.0)
    wander: float = 0.0
    level_wander: float = 0.0
    wander_tau: float = 1.0
    whisper: bool = True
    loudness_contour: float = 0.0
    trajectory_lowpass: float = 10.0
    quantisation_step: float = 2.0
    dither: bool = True
    jitter: float = 3.0
    spread_normalisation: bool = False
    rank_equalisation: float = 0.5
    equalisation_window: float = 10.0
    name: str = "pseudo-speaker"

    @classmethod
    def version_2(cls, **overrides: Any) -> PseudoSpeaker:
        """Version 2 (ADR 0903): timbre, wander and dynamics draws, no trajectory steps."""
        v2: dict[str, Any] = {"timbre_spread": 0.15, "dynamics_range": (0.8, 1.25), "wander": 0.3,
                              "trajectory_lowpass": 0.0, "quantisation_step": 0.0, "jitter": 0.0}
        return cls.version_3(**{**v2, **overrides})

    @classmethod
    def version_3(cls, **overrides: Any) -> PseudoSpeaker:
        """Version 3 (ADR 0905): mean and spread normalised, jitter up to 4, a drifting level, no ranks."""
        v3: dict[str, Any] = {"jitter": 4.0, "level_wander": 0.5, "spread_normalisation": True,
                              "rank_equalisation": 0.0}
        return cls(**{**v3, **overrides})

    @property
    def version(self) -> int:
        """4 with the rank equalisation on or the spread normalisation off; 3 when any other trajectory
        step is on; else 2 (what the receipt names)."""
        if self.rank_equalisation or not self.spread_normalisation:
            return 4
        return 3 if self.trajectory_lowpass or self.quantisation_step or self.jitter else 2

    def __post_init__(self) -> None:
        super().__post_init__()
        wlo, whi = self.warp_range
        dlo, dhi = self.dynamics_range
        if not -0.4 <= wlo <= whi <= 0.4 or not 0.5 <= dlo <= dhi <= 2.0:
            raise ConfigError("pseudo-speaker: warp in [-0.4, 0.4], dynamics in [0.5, 2]")
        if not 0.0 <= self.wander <= 1.0 or not 0.0 <= self.level_wander <= 1.0 or not 0.05 <= self.wander_tau <= 10.0:
            raise ConfigError("pseudo-speaker: wander and level_wander in [0, 1], wander_tau in [0.05, 10] s")
        if not 0.0 <= self.loudness_contour <= 1.0:
            raise ConfigError("pseudo-speaker: loudness_contour in [0, 1]")
        if not 0.0 <= self.trajectory_lowpass <= 40.0 or not 0.0 <= self.quantisation_step <= 8.0 \
                or not 0.0 <= self.jitter <= 10.0:
            raise ConfigError("pseudo-speaker: trajectory_lowpass in [0, 40] Hz, quantisation_step in [0, 8], "
                              "jitter in [0, 10]")
        if not 0.0 <= self.rank_equalisation <= 1.0 or not 0.5 <= self.equalisation_window <= 60.0:
            raise ConfigError("pseudo-speaker: rank_equalisation in [0, 1], equalisation_window in [0.5, 60] s")

    def params(self) -> dict[str, Any]:
        common = self._common_params()
        if self.whisper:  # a noise source has no pitch: the receipt names only parameters that took effect
            del common["f0_range_hz"], common["intonation"]
        params = {**common, "version": self.version, "warp_range": list(self.warp_range),
                  "excitation": "whispered (noise)" if self.whisper else "synthetic",
                  "loudness_contour": self.loudness_contour,
                  "dynamics_range": list(self.dynamics_range),
                  "wander": self.wander, "level_wander": self.level_wander, "wander_tau_s": self.wander_tau,
                  "envelope": "speaker-normalised (mean and spread)" if self.spread_normalisation
                  else "speaker-normalised (mean)", "draws": "per-utterance, wandering"}
        if self.version >= 3:
            params.update({"trajectory_lowpass_hz": self.trajectory_lowpass,
                           "quantisation_step": self.quantisation_step, "jitter": self.jitter,
                           "jitter_draw": "amplitude per utterance, noise per frame"})
            if self.quantisation_step:
                params["quantisation_dither"] = "per utterance" if self.dither else "none"
        if self.rank_equalisation:
            params.update({"rank_equalisation": self.rank_equalisation,
                           "equalisation_window_s": self.equalisation_window})
        return params

    def _draw(self, rate: int) -> _Draws:
        rng = self._rng()
        timbre = self._draw_timbre(rng)
        wander_rng = np.random.default_rng(int(rng.integers(2**63)))
        warp = float(rng.uniform(*self.warp_range))
        source = _Excitation(rng, rate, self._draw_f0(rng), self.intonation, voicing=not self.whisper)
        dynamics = float(np.exp(rng.uniform(*np.log(self.dynamics_range))))
        level = self._draw_level(rng)
        jitter_rng = np.random.default_rng(int(rng.integers(2**63)))
        jitter_amplitude = self.jitter * float(rng.uniform())
        q = self.quefrency
        grid_offset = rng.uniform(-0.5, 0.5, q) if self.dither else np.zeros(q)
        return _Draws(source, wander_rng, warp, timbre, dynamics, level, np.zeros(q + 1),
                      jitter_rng, jitter_amplitude, grid_offset)

    def _equalise(self, st: _Draws, cep: Frames, window: int) -> Frames:
        """Version 4's ranks (rows are frames): each coefficient's rank among the utterance's last ``window``
        frames (this one included) as a quantile of the standard Gaussian. Causal; the window's frames are
        carried across batches, so the result does not depend on how the input is batched."""
        past = np.empty((0, cep.shape[1])) if st.ranked is None else st.ranked
        seen = np.vstack([past, cep])
        out = np.empty_like(cep)
        for lo in range(0, len(cep), _RANK_CHUNK):
            at = len(past) + np.arange(lo, min(lo + _RANK_CHUNK, len(cep)))  # the frames' rows in `seen`
            first = max(0, int(at[0]) - window + 1)
            rows = np.arange(first, int(at[-1]) + 1)
            inside = ((rows[None, :] <= at[:, None]) & (rows[None, :] > at[:, None] - window))[:, :, None]
            x, ref = seen[at][:, None, :], seen[first : at[-1] + 1][None, :, :]
            below = ((ref < x) & inside).sum(axis=1)
            tied = ((ref == x) & inside).sum(axis=1)  # this frame itself included
            count = inside.sum(axis=1)
            out[at - len(past)] = ndtri((below + 0.5 * tied + 0.5) / (count + 1.0))
        st.ranked = seen[max(0, len(seen) - (window - 1)):] if window > 1 else seen[:0]
        return out

    def _normalise(self, st: _Draws, cep: Frames, mean: Frames, spread: Frames, generic_spread: Samples,
                   window: int) -> Frames:
        """The speaker-normalised trajectory (rows are frames): the running mean removed, the running spread
        scaled to the generic one (up to version 3), and in version 4 a share replaced by the ranks."""
        gain = np.clip(generic_spread / spread, 0.5, 2.0) if self.spread_normalisation else 1.0
        norm: Frames = (cep - mean) * gain
        if self.rank_equalisation:
            ranks = self._equalise(st, cep, max(1, window))
            norm = (1.0 - self.rank_equalisation) * norm + self.rank_equalisation * ranks * generic_spread
        return norm

    def _shape_trajectory(self, st: _Draws, norm: Frames, frame_rate: float, spread: Samples) -> Frames:
        """Version 3's steps on the speaker-normalised trajectory (rows are frames): low-pass, dithered grid,
        per-frame jitter. All three are causal and carry their state across batches."""
        if self.trajectory_lowpass:
            pole = float(np.exp(-2.0 * np.pi * self.trajectory_lowpass / frame_rate))
            previous = norm[0] if st.lowpassed is None else st.lowpassed  # the filter starts on the first frame
            norm, _ = lfilter([1.0 - pole], [1.0, -pole], norm, axis=0, zi=pole * previous[None, :])
            st.lowpassed = norm[-1].copy()
        if self.quantisation_step:
            step = self.quantisation_step * spread
            offset = st.grid_offset * step
            norm = np.round((norm - offset) / step) * step + offset
        if st.jitter_amplitude:
            profile = spread / np.sqrt(1.0 + np.arange(len(spread)))
            norm = norm + st.jitter_amplitude * profile * st.jitter_rng.standard_normal(norm.shape)
        return norm

    def stream(self, rate: int) -> VoiceStream:
        """A fresh stream for one utterance (new draws)."""
        st = self._draw(rate)
        q, order = self.quefrency, 4 + rate // 1000
        wander_scale = np.concatenate([self.wander / (1 + np.arange(q)), [self.level_wander]])
        wander_scale[0] = 0.0
        generic_spread = 0.5 / (1 + np.arange(q))  # the pseudo-speaker's articulation range
        streams: list[VoiceStream] = []  # the stream this frame function belongs to (set below)

        def drift(n: int, hop: int) -> Frames:
            rho = float(np.exp(-hop / rate / self.wander_tau))
            out = np.empty((n, q + 1))
            for i in range(n):
                step = wander_scale * st.wander_rng.standard_normal(q + 1)
                st.wander = rho * st.wander + np.sqrt(1.0 - rho * rho) * step
                out[i] = st.wander
            return out

        def frame(x: Frames, starts: npt.NDArray[np.int64]) -> Frames:
            stream = streams[0]
            hop, length = stream.hop, x.shape[1]
            a = _lpc(x, order)
            # A whispered source needs no residual (no pitch to follow), only the frames' shape.
            exc = st.source.frames(x if self.whisper else _fir(a, x), starts, hop)
            nfft = 1 << (2 * length - 1).bit_length()
            bins = nfft // 2 + 1
            if bins not in st.warp_map:
                st.warp_map[bins] = _bilinear_map(bins, st.warp)
            i0, wt = st.warp_map[bins]
            envelope = -np.log(np.abs(np.fft.rfft(a, nfft, axis=1)) + 1e-9)
            envelope = envelope[:, i0] * (1.0 - wt) + envelope[:, i0 + 1] * wt
            cep = np.fft.irfft(envelope, nfft, axis=1)[:, :q]
            # Speaker normalisation: running energy-weighted mean and spread of the envelope so far.
            w = np.sqrt((x * x).mean(axis=1))
            csum = np.cumsum(cep * w[:, None], axis=0)
            c2sum = np.cumsum(cep * cep * w[:, None], axis=0)
            wsum = np.cumsum(w) + st.wsum
            if st.csum is not None and st.c2sum is not None:
                csum += st.csum
                c2sum += st.c2sum
            st.csum, st.c2sum, st.wsum = csum[-1].copy(), c2sum[-1].copy(), float(wsum[-1])
            mean = csum / np.maximum(wsum, 1e-12)[:, None]
            spread = np.sqrt(np.maximum(c2sum / np.maximum(wsum, 1e-12)[:, None] - mean * mean, 1e-8))
            norm = self._normalise(st, cep, mean, spread, generic_spread, round(self.equalisation_window * rate / hop))
            wandering = drift(len(x), hop)
            norm = self._shape_trajectory(st, norm, rate / hop, generic_spread)
            cep = st.dynamics * norm + st.timbre + wandering[:, :q]
            y = _cepstral_filter(cep, exc, stream.window, nfft)
            # Output level: the drawn level, drifting, times the frame's loudness relative to
            # the running loudness raised to loudness_contour (so the recording level does not
            # survive, and with 0 neither does the contour); digital silence stays silent.
            loud = np.cumsum(w * w) + st.loud
            st.loud = float(loud[-1])
            ratio = w / np.maximum(loud / np.maximum(wsum, 1e-12), 1e-9)
            relative = np.where(w > 0.0, ratio**self.loudness_contour, 0.0)
            gain_out = st.level * relative * np.exp(wandering[:, q]) / np.sqrt(length)
            out: Frames = _energy_match(y, np.ones_like(x)) * gain_out[:, None]
            return out

        streams.append(VoiceStream(rate, frame))
        return streams[0]
