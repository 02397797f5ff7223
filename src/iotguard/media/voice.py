"""Voice anonymisation at the microphone, streaming on frames with bounded latency.

Two transforms, both linear-prediction (LPC) analysis/synthesis on 20 ms
frames every 10 ms with overlap-add, so a sample leaves the transform at
most one frame (20 ms) after it entered:

* ``mcadams`` — the VoicePrivacy Challenge B2 baseline (Patino et al.,
  Interspeech 2021): the angles of the complex LPC poles are raised to the
  McAdams coefficient ``alpha`` (0.8), which moves the formants; the LPC
  residual (the speaker's own excitation: pitch, voice quality) is kept.
* ``randomised-vocoder`` — iotguard's transform (ADR 0900). Per utterance it
  draws, from the OS CSPRNG, a McAdams coefficient, a target pitch, a
  pseudo-speaker timbre and an output level; per frame it warps the pole
  angles, **discards the residual** and re-synthesises with a new
  excitation (a pulse train at the target pitch, following the speaker's
  intonation only relatively, or noise for unvoiced frames), through an
  envelope whose long-term average (the speaker's timbre, estimated as a
  running mean over the utterance) is replaced by the drawn one, at the
  drawn level. Glottal pulse shape, absolute pitch, timbre and recording
  level do not survive, and because the draws change per utterance an
  attacker who enrols on anonymised speech learns a different voice each
  time.

A transform is described for receipts by :meth:`VoiceTransform.params`
(method, version and parameter ranges); per-utterance draws are never
reported.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from iotguard.errors import ConfigError
from iotguard.media.audio import Audio

__all__ = [
    "DEFAULT_VOICE_METHOD",
    "VOICE_METHODS",
    "McAdams",
    "RandomisedVocoder",
    "VoiceStream",
    "VoiceTransform",
    "voice_transform",
]

Samples = npt.NDArray[np.float64]
Frames = npt.NDArray[np.float64]
#: Processes a batch of windowed frames (rows) starting at the given global positions.
_FrameFn = Callable[[Frames, npt.NDArray[np.int64]], Frames]


class VoiceTransform(Protocol):
    """A voice anonymisation method."""

    @property
    def name(self) -> str:
        """The method's name (``"mcadams"``, ``"randomised-vocoder"``)."""

    def params(self) -> dict[str, Any]:
        """Method, version and parameters as recorded in privacy receipts."""

    def stream(self, rate: int) -> VoiceStream:
        """A fresh stream for one utterance (new per-utterance draws)."""

    def apply(self, audio: Audio) -> Audio:
        """Transform a whole clip (the same code as the stream)."""


def _lpc(frames: Frames, order: int) -> Frames:
    """LPC polynomials ``[1, a1..ap]`` per row by autocorrelation and Levinson-Durbin (minimum phase)."""
    n, length = frames.shape
    spec = np.fft.rfft(frames, 2 * length, axis=1)
    r = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, : order + 1]
    r = r * np.exp(-0.5 * (0.0005 * np.arange(order + 1)) ** 2)  # lag window: bounded pole sharpness
    r[:, 0] = r[:, 0] * (1.0 + 1e-6) + 1e-12  # white-noise correction keeps the recursion stable
    a = np.zeros((n, order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        k = -(a[:, :i] * r[:, i:0:-1]).sum(axis=1) / err
        a[:, 1 : i + 1] = a[:, 1 : i + 1] + k[:, None] * a[:, i - 1 :: -1][:, :i]
        err = err * (1.0 - k * k)
    return a


def _fir(coeffs: Frames, frames: Frames) -> Frames:
    """Per-row FIR filter with zero initial state (``lfilter(a, 1, x)`` for each row)."""
    out = coeffs[:, :1] * frames
    for k in range(1, coeffs.shape[1]):
        out[:, k:] += coeffs[:, k : k + 1] * frames[:, :-k]
    return out


def _iir(coeffs: Frames, frames: Frames) -> Frames:
    """Per-row all-pole filter ``lfilter(1, a, x)`` with zero initial state."""
    return np.stack([lfilter([1.0], coeffs[i], frames[i]) for i in range(len(frames))])


def _warp_poles(a: Frames, alpha: Samples) -> Frames:
    """Raise the angles of the complex poles of each ``1/A(z)`` to ``alpha`` (McAdams), per row."""
    n, p1 = a.shape
    order = p1 - 1
    companion = np.zeros((n, order, order))
    companion[:, 0, :] = -a[:, 1:]
    companion[:, np.arange(1, order), np.arange(order - 1)] = 1.0
    poles = np.linalg.eigvals(companion)
    angles = np.angle(poles)
    complex_pole = np.abs(poles.imag) > 1e-9
    new_angles = np.where(complex_pole, np.sign(angles) * np.clip(np.abs(angles) ** alpha[:, None], 0.0, np.pi),
                          angles)
    poles = np.abs(poles) * np.exp(1j * new_angles)
    c = np.zeros((n, p1), dtype=np.complex128)
    c[:, 0] = 1.0
    for k in range(order):
        c[:, 1:] = c[:, 1:] - poles[:, k : k + 1] * c[:, :-1]
    return np.real(c)


class VoiceStream:
    """Frame-by-frame overlap-add processor with a bounded delay.

    ``push`` accepts any number of samples and returns the samples that are
    final; ``flush`` ends the utterance. Output length equals input length,
    and no output sample waits for more than :attr:`latency_samples` of
    later input.
    """

    def __init__(self, rate: int, frame_fn: _FrameFn, *, frame_ms: int = 20) -> None:
        self.rate = rate
        self.length = int(rate * frame_ms / 1000)
        self.hop = self.length // 2
        hann = np.hanning(self.length)
        self.window = np.sqrt(hann / (hann.sum() / self.hop))
        self._fn = frame_fn
        self._inbuf = np.zeros(0)
        self._acc = np.zeros(self.length)
        self._pos = 0  # global index of the next frame start
        self._consumed = 0
        self._emitted = 0

    @property
    def latency_samples(self) -> int:
        """Largest delay of an output sample behind the input needed to produce it."""
        return self.length

    def push(self, samples: Samples) -> Samples:
        """Feed samples; returns the output samples that are now final.

        Every frame whose input is complete is processed (in one batch), so a
        sample is final as soon as the frame after it has arrived.
        """
        self._inbuf = np.concatenate([self._inbuf, np.asarray(samples, dtype=np.float64)])
        self._consumed += len(samples)
        n = 0 if len(self._inbuf) < self.length else 1 + (len(self._inbuf) - self.length) // self.hop
        if n == 0:
            return np.zeros(0)
        idx = np.arange(self.length)[None, :] + self.hop * np.arange(n)[:, None]
        starts = self._pos + self.hop * np.arange(n, dtype=np.int64)
        y = self._fn(self._inbuf[idx] * self.window, starts) * self.window
        acc = np.zeros((n + 1) * self.hop)
        acc[: self.length] += self._acc
        for half in range(2):  # overlap-add: each frame is two hops
            lo = half * self.hop
            acc[lo : lo + n * self.hop] += y[:, lo : lo + self.hop].ravel()
        self._acc = np.concatenate([acc[n * self.hop :], np.zeros(self.hop)])
        self._inbuf = self._inbuf[n * self.hop :]
        self._pos += n * self.hop
        self._emitted += n * self.hop
        return acc[: n * self.hop]

    def flush(self) -> Samples:
        """End the utterance: the remaining output, so that output length equals input length."""
        real = self._consumed
        before = self._emitted
        y = self.push(np.zeros(self.length))
        self._consumed = real
        tail = np.concatenate([y, self._acc])
        return tail[: max(0, real - before)]


def _energy_match(y: Frames, reference: Frames) -> Frames:
    """Scale each row of ``y`` to the energy of the same row of ``reference``."""
    ey = (y * y).sum(axis=1)
    er = (reference * reference).sum(axis=1)
    ok = np.isfinite(ey) & (ey > 1e-20)
    gain = np.where(ok, np.sqrt(er / np.where(ok, ey, 1.0)), 0.0)
    return np.where(ok[:, None], y, 0.0) * gain[:, None]


def _run(stream: VoiceStream, audio: Audio) -> Audio:
    y = np.concatenate([stream.push(audio.samples), stream.flush()])
    return Audio(np.clip(y, -1.0, 1.0), audio.rate)


@dataclass(frozen=True)
class McAdams:
    """The McAdams-coefficient transform (VoicePrivacy B2 baseline).

    Args:
        alpha: McAdams coefficient applied to the pole angles (B2: 0.8).
        order: LPC order (B2: 20).
    """

    alpha: float = 0.8
    order: int = 20
    name: str = "mcadams"

    def __post_init__(self) -> None:
        if not 0.5 <= self.alpha <= 1.5 or not 4 <= self.order <= 40:
            raise ConfigError("mcadams: alpha must be in [0.5, 1.5] and order in [4, 40]")

    def params(self) -> dict[str, Any]:
        return {"method": self.name, "version": 1, "alpha": self.alpha, "lpc_order": self.order,
                "frame_ms": 20, "hop_ms": 10}

    def stream(self, rate: int) -> VoiceStream:
        alpha, order = self.alpha, self.order

        def frame(x: Frames, _starts: npt.NDArray[np.int64]) -> Frames:
            a = _lpc(x, order)
            residual = _fir(a, x)
            return _energy_match(_iir(_warp_poles(a, np.full(len(x), alpha)), residual), x)

        return VoiceStream(rate, frame)

    def apply(self, audio: Audio) -> Audio:
        return _run(self.stream(audio.rate), audio)


@dataclass
class _VocoderState:
    rng: np.random.Generator
    alpha: float
    target_f0: float
    order: int
    rate: int
    target_cepstrum: Samples
    mean_log_f0: float | None = None
    next_pulse: float = 0.0
    block: Samples = field(default_factory=lambda: np.zeros(0))
    cepstrum_sum: Samples | None = None
    weight_sum: float = 0.0
    level: float = 0.1
    loud_sum: float = 0.0


def _pitch(frames: Frames, rate: int) -> Samples:
    """F0 per row by normalised autocorrelation; 0.0 where the frame is unvoiced."""
    length = frames.shape[1]
    r = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * length, axis=1)) ** 2, axis=1)[:, :length]
    lo, hi = rate // 400, min(length - 1, rate // 70)
    lag = lo + np.argmax(r[:, lo:hi], axis=1)
    peak = r[np.arange(len(frames)), lag]
    voiced = (r[:, 0] > 1e-8) & (peak > 0.3 * r[:, 0])
    return np.where(voiced, rate / lag, 0.0)


@dataclass(frozen=True)
class RandomisedVocoder:
    """iotguard's voice transform: random formant warp, synthetic excitation, speaker-normalised envelope.

    Args:
        alpha_range: Range of the per-utterance McAdams coefficient.
        f0_range: Range of the per-utterance target pitch in Hz.
        intonation: How much of the speaker's relative pitch movement is
            kept (0: monotone, 1: all of it).
        quefrency: Cepstral coefficients of the envelope that are
            speaker-normalised (the rest of the envelope is smoothed away).
        timbre_spread: Standard deviation of the per-utterance random
            pseudo-speaker timbre (a random long-term cepstrum).
        seed: Only for tests and benchmarks: a fixed seed for the draws;
            ``None`` (the default) draws from the OS CSPRNG.
    """

    alpha_range: tuple[float, float] = (0.7, 0.9)
    f0_range: tuple[float, float] = (100.0, 220.0)
    intonation: float = 0.5
    quefrency: int = 30
    timbre_spread: float = 0.15
    seed: int | None = None
    name: str = "randomised-vocoder"
    _counter: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)

    def __post_init__(self) -> None:
        lo, hi = self.alpha_range
        flo, fhi = self.f0_range
        if not 0.5 <= lo <= hi <= 1.5 or not 60.0 <= flo <= fhi <= 400.0 or not 0.0 <= self.intonation <= 1.0:
            raise ConfigError("randomised-vocoder: alpha in [0.5, 1.5], f0 in [60, 400] Hz, intonation in [0, 1]")
        if not 4 <= self.quefrency <= 64 or not 0.0 <= self.timbre_spread <= 1.0:
            raise ConfigError("randomised-vocoder: quefrency in [4, 64], timbre_spread in [0, 1]")

    def params(self) -> dict[str, Any]:
        return {"method": self.name, "version": 1, "alpha_range": list(self.alpha_range),
                "f0_range_hz": list(self.f0_range), "intonation": self.intonation,
                "quefrency": self.quefrency, "timbre_spread": self.timbre_spread,
                "excitation": "synthetic", "envelope": "speaker-normalised", "level_range_rms": [0.05, 0.2],
                "draws": "per-utterance",
                "frame_ms": 20, "hop_ms": 10}

    def _rng(self) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(secrets.randbits(128))
        self._counter[0] += 1
        return np.random.default_rng([self.seed, self._counter[0]])

    def stream(self, rate: int) -> VoiceStream:
        rng = self._rng()
        st = _VocoderState(rng, float(rng.uniform(*self.alpha_range)),
                           float(np.exp(rng.uniform(np.log(self.f0_range[0]), np.log(self.f0_range[1])))),
                           4 + rate // 1000, rate,
                           rng.normal(0.0, self.timbre_spread, self.quefrency) / (1 + np.arange(self.quefrency)))
        st.target_cepstrum[0] = 0.0
        st.level = float(np.exp(rng.uniform(np.log(0.05), np.log(0.2))))
        intonation = self.intonation
        q = self.quefrency
        stream: VoiceStream | None = None

        def excitation_block(start: int, hop: int, f0: float | None) -> Samples:
            block = np.zeros(hop)
            if f0 is None:
                st.next_pulse = float(start + hop)
                return st.rng.standard_normal(hop)
            if st.next_pulse < start:
                st.next_pulse = float(start)
            period = rate / f0
            while st.next_pulse < start + hop:
                block[int(st.next_pulse) - start] = 1.0
                st.next_pulse += period * (1.0 + 0.01 * st.rng.standard_normal())
            block += 0.05 * st.rng.standard_normal(hop)
            return block

        def frame(x: Frames, starts: npt.NDArray[np.int64]) -> Frames:
            assert stream is not None
            hop = stream.hop
            a = _lpc(x, st.order)
            residual = _fir(a, x)
            exc = np.empty_like(x)
            pitch = _pitch(residual, rate)
            for i, pos in enumerate(starts):
                f0 = float(pitch[i])
                new_f0: float | None = None
                if f0 > 0.0:
                    lf = float(np.log(f0))
                    st.mean_log_f0 = lf if st.mean_log_f0 is None else 0.9 * st.mean_log_f0 + 0.1 * lf
                    new_f0 = st.target_f0 * float(np.exp(intonation * (lf - st.mean_log_f0)))
                if len(st.block) != hop:
                    st.block = excitation_block(int(pos), hop, new_f0)
                fresh = excitation_block(int(pos) + hop, x.shape[1] - hop, new_f0)
                exc[i, :hop] = st.block
                exc[i, hop:] = fresh
                st.block = fresh
            nfft = 1 << (2 * x.shape[1] - 1).bit_length()
            envelope = -np.log(np.abs(np.fft.rfft(_warp_poles(a, np.full(len(x), st.alpha)), nfft, axis=1)) + 1e-9)
            cep = np.fft.irfft(envelope, nfft, axis=1)[:, :q]
            # Speaker normalisation: remove the utterance's long-term envelope so far
            # (energy-weighted running mean) and impose the random pseudo-speaker's.
            w = np.sqrt((x * x).mean(axis=1))
            csum = np.cumsum(cep * w[:, None], axis=0)
            wsum = np.cumsum(w)
            if st.cepstrum_sum is not None:
                csum += st.cepstrum_sum
                wsum += st.weight_sum
            st.cepstrum_sum, st.weight_sum = csum[-1].copy(), float(wsum[-1])
            mean = csum / np.maximum(wsum, 1e-12)[:, None]
            cep = cep - mean + st.target_cepstrum
            cep[:, 0] = 0.0
            folded = np.zeros((len(x), nfft))
            folded[:, :q] = cep
            folded[:, 1:q] *= 2.0  # minimum-phase folding of the real cepstrum
            response = np.exp(np.fft.rfft(folded, axis=1))
            y = np.fft.irfft(np.fft.rfft(exc * stream.window, nfft, axis=1) * response, nfft, axis=1)[:, : x.shape[1]]
            # Level normalisation: the recording level identifies a speaker's
            # microphone and room, so the output level is the utterance's random
            # draw (running loudness estimate, weighted towards loud frames).
            loud = np.cumsum(w * w) + st.loud_sum
            running = loud / np.maximum(wsum, 1e-12)
            st.loud_sum = float(loud[-1])
            gain = st.level / np.maximum(running, 1e-6)
            out: Frames = _energy_match(y, x) * gain[:, None]
            return out

        stream = VoiceStream(rate, frame)
        return stream

    def apply(self, audio: Audio) -> Audio:
        return _run(self.stream(audio.rate), audio)


# The pseudo-speaker conversion builds on this module's stream and LPC analysis, so it is
# imported once they are defined.
from iotguard.media.pseudo_speaker import PseudoSpeaker  # noqa: E402

#: Voice methods by name; the default is the strongest shipped.
VOICE_METHODS: dict[str, Callable[..., VoiceTransform]] = {
    "mcadams": McAdams,
    "randomised-vocoder": RandomisedVocoder,
    "pseudo-speaker": PseudoSpeaker,
}
DEFAULT_VOICE_METHOD = "pseudo-speaker"


def voice_transform(method: str = DEFAULT_VOICE_METHOD, **params: Any) -> VoiceTransform:
    """Build a voice transform by name.

    Raises:
        ConfigError: unknown method or invalid parameters.
    """
    factory = VOICE_METHODS.get(method)
    if factory is None:
        raise ConfigError(f"unknown voice method {method!r} (one of {sorted(VOICE_METHODS)})")
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"{method}: {exc}") from None
