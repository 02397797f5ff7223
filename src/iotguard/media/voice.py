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
from abc import ABC, abstractmethod
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


def _pitch(frames: Frames, rate: int) -> Samples:
    """F0 per row by normalised autocorrelation; 0.0 where the frame is unvoiced."""
    length = frames.shape[1]
    r = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * length, axis=1)) ** 2, axis=1)[:, :length]
    lo, hi = rate // 400, min(length - 1, rate // 70)
    lag = lo + np.argmax(r[:, lo:hi], axis=1)
    peak = r[np.arange(len(frames)), lag]
    voiced = (r[:, 0] > 1e-8) & (peak > 0.3 * r[:, 0])
    return np.where(voiced, rate / lag, 0.0)


@dataclass
class _Excitation:
    """One utterance's synthetic excitation, replacing the speaker's glottal source (the LPC residual).

    Voiced frames get a pulse train at the drawn target pitch that follows
    the speaker's intonation only relatively (``intonation`` of the log-F0
    movement around its running mean); unvoiced frames get white noise.
    With ``voicing`` off every frame gets noise (whispered speech): neither
    the speaker's voicing decisions nor their intonation survive. Blocks are
    one hop long and carried across frames, so the excitation is the same
    however the input is batched.
    """

    rng: np.random.Generator
    rate: int
    target_f0: float
    intonation: float
    voicing: bool = True
    mean_log_f0: float | None = None
    next_pulse: float = 0.0
    block: Samples = field(default_factory=lambda: np.zeros(0))

    def _block(self, start: int, hop: int, f0: float | None) -> Samples:
        if f0 is None:
            self.next_pulse = float(start + hop)
            return self.rng.standard_normal(hop)
        block = np.zeros(hop)
        self.next_pulse = max(self.next_pulse, float(start))
        period = self.rate / f0
        while self.next_pulse < start + hop:
            block[int(self.next_pulse) - start] = 1.0
            self.next_pulse += period * (1.0 + 0.01 * self.rng.standard_normal())
        return block + 0.05 * self.rng.standard_normal(hop)

    def frames(self, residual: Frames, starts: npt.NDArray[np.int64], hop: int) -> Frames:
        """The excitation of each frame (rows of ``residual``, starting at ``starts``)."""
        exc = np.empty_like(residual)
        pitch = _pitch(residual, self.rate) if self.voicing else np.zeros(len(residual))
        for i, pos in enumerate(starts):
            f0 = float(pitch[i])
            new_f0: float | None = None
            if f0 > 0.0:
                lf = float(np.log(f0))
                self.mean_log_f0 = lf if self.mean_log_f0 is None else 0.9 * self.mean_log_f0 + 0.1 * lf
                new_f0 = self.target_f0 * float(np.exp(self.intonation * (lf - self.mean_log_f0)))
            if len(self.block) != hop:
                self.block = self._block(int(pos), hop, new_f0)
            fresh = self._block(int(pos) + hop, residual.shape[1] - hop, new_f0)
            exc[i, :hop] = self.block
            exc[i, hop:] = fresh
            self.block = fresh
        return exc


def _cepstral_filter(cep: Frames, exc: Frames, window: Samples, nfft: int) -> Frames:
    """Filter windowed excitation frames through the minimum-phase envelopes of real cepstra ``cep``."""
    n, q = cep.shape
    folded = np.zeros((n, nfft))
    folded[:, :q] = cep
    folded[:, 0] = 0.0
    folded[:, 1:q] *= 2.0  # minimum-phase folding of the real cepstrum
    response = np.exp(np.fft.rfft(folded, axis=1))
    out: Frames = np.fft.irfft(np.fft.rfft(exc * window, nfft, axis=1) * response, nfft, axis=1)[:, : exc.shape[1]]
    return out


@dataclass(frozen=True)
class _RandomisedVoice(ABC):
    """Parameters, validation and per-utterance draws shared by iotguard's randomised transforms.

    Args:
        f0_range: Range of the per-utterance target pitch in Hz.
        intonation: How much of the speaker's relative pitch movement is
            kept (0: monotone, 1: all of it).
        quefrency: Cepstral coefficients of the envelope that are modelled
            (the rest of the envelope is smoothed away).
        timbre_spread: Standard deviation of the per-utterance random
            pseudo-speaker timbre (a random long-term cepstrum).
        seed: Only for tests and benchmarks: a fixed seed for the draws;
            ``None`` (the default) draws from the OS CSPRNG.
    """

    f0_range: tuple[float, float] = (100.0, 220.0)
    intonation: float = 0.5
    quefrency: int = 30
    timbre_spread: float = 0.15
    seed: int | None = None
    name: str = ""
    _counter: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)

    def __post_init__(self) -> None:
        flo, fhi = self.f0_range
        if not 60.0 <= flo <= fhi <= 400.0 or not 0.0 <= self.intonation <= 1.0:
            raise ConfigError(f"{self.name}: f0 in [60, 400] Hz, intonation in [0, 1]")
        if not 4 <= self.quefrency <= 64 or not 0.0 <= self.timbre_spread <= 1.0:
            raise ConfigError(f"{self.name}: quefrency in [4, 64], timbre_spread in [0, 1]")

    def _common_params(self) -> dict[str, Any]:
        return {"method": self.name, "f0_range_hz": list(self.f0_range), "intonation": self.intonation,
                "quefrency": self.quefrency, "timbre_spread": self.timbre_spread, "excitation": "synthetic",
                "level_range_rms": [0.05, 0.2], "frame_ms": 20, "hop_ms": 10}

    def _rng(self) -> np.random.Generator:
        """The generator of one utterance's draws: the OS CSPRNG, or the test seed and a counter."""
        if self.seed is None:
            return np.random.default_rng(secrets.randbits(128))
        self._counter[0] += 1
        return np.random.default_rng([self.seed, self._counter[0]])

    def _draw_f0(self, rng: np.random.Generator) -> float:
        return float(np.exp(rng.uniform(np.log(self.f0_range[0]), np.log(self.f0_range[1]))))

    def _draw_timbre(self, rng: np.random.Generator) -> Samples:
        timbre: Samples = rng.normal(0.0, self.timbre_spread, self.quefrency) / (1 + np.arange(self.quefrency))
        timbre[0] = 0.0
        return timbre

    @staticmethod
    def _draw_level(rng: np.random.Generator) -> float:
        return float(np.exp(rng.uniform(np.log(0.05), np.log(0.2))))

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Method, version and parameter ranges as recorded in privacy receipts."""

    @abstractmethod
    def stream(self, rate: int) -> VoiceStream:
        """A fresh stream for one utterance (new draws)."""

    def apply(self, audio: Audio) -> Audio:
        """Transform a whole clip (the same code as the stream; one utterance)."""
        return _run(self.stream(audio.rate), audio)


@dataclass(frozen=True)
class RandomisedVocoder(_RandomisedVoice):
    """iotguard's first voice transform: random formant warp, synthetic excitation, speaker-normalised envelope.

    Args:
        alpha_range: Range of the per-utterance McAdams coefficient.
        (the other parameters: :class:`_RandomisedVoice`)
    """

    alpha_range: tuple[float, float] = (0.7, 0.9)
    name: str = "randomised-vocoder"

    def __post_init__(self) -> None:
        super().__post_init__()
        lo, hi = self.alpha_range
        if not 0.5 <= lo <= hi <= 1.5:
            raise ConfigError("randomised-vocoder: alpha in [0.5, 1.5]")

    def params(self) -> dict[str, Any]:
        return {**self._common_params(), "version": 1, "alpha_range": list(self.alpha_range),
                "envelope": "speaker-normalised", "draws": "per-utterance"}

    def stream(self, rate: int) -> VoiceStream:
        rng = self._rng()
        alpha = float(rng.uniform(*self.alpha_range))
        source = _Excitation(rng, rate, self._draw_f0(rng), self.intonation)
        target_cepstrum = self._draw_timbre(rng)
        level = self._draw_level(rng)
        order, q = 4 + rate // 1000, self.quefrency
        # Running sums of the envelope (energy-weighted), the weights and the loudness.
        sums: dict[str, Any] = {"cep": None, "w": 0.0, "loud": 0.0}
        streams: list[VoiceStream] = []

        def frame(x: Frames, starts: npt.NDArray[np.int64]) -> Frames:
            stream = streams[0]
            a = _lpc(x, order)
            exc = source.frames(_fir(a, x), starts, stream.hop)
            nfft = 1 << (2 * x.shape[1] - 1).bit_length()
            envelope = -np.log(np.abs(np.fft.rfft(_warp_poles(a, np.full(len(x), alpha)), nfft, axis=1)) + 1e-9)
            cep = np.fft.irfft(envelope, nfft, axis=1)[:, :q]
            # Speaker normalisation: remove the utterance's long-term envelope so far
            # (energy-weighted running mean) and impose the random pseudo-speaker's.
            w = np.sqrt((x * x).mean(axis=1))
            csum = np.cumsum(cep * w[:, None], axis=0)
            wsum = np.cumsum(w) + sums["w"]
            if sums["cep"] is not None:
                csum += sums["cep"]
            sums["cep"], sums["w"] = csum[-1].copy(), float(wsum[-1])
            cep = cep - csum / np.maximum(wsum, 1e-12)[:, None] + target_cepstrum
            y = _cepstral_filter(cep, exc, stream.window, nfft)
            # Level normalisation: the recording level identifies a speaker's
            # microphone and room, so the output level is the utterance's random
            # draw (running loudness estimate, weighted towards loud frames).
            loud = np.cumsum(w * w) + sums["loud"]
            sums["loud"] = float(loud[-1])
            gain = level / np.maximum(loud / np.maximum(wsum, 1e-12), 1e-6)
            out: Frames = _energy_match(y, x) * gain[:, None]
            return out

        streams.append(VoiceStream(rate, frame))
        return streams[0]


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
