"""Audio at the sensor: strict PCM WAV codec, framing and MFCC features.

The codec parses untrusted bytes (a file handed to the CLI, a clip a
microphone driver produced) with explicit size limits and one reason per
rejection; it accepts what a microphone produces — RIFF/WAVE, integer PCM,
8 or 16 bits, mono or stereo (mixed down) — and nothing else. Samples are
float64 in [-1, 1]. No I/O: bytes in, arrays out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.fft import dct

from iotguard.errors import MalformedError

__all__ = [
    "MAX_AUDIO_BYTES",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "Audio",
    "decode_wav",
    "encode_wav",
    "frames",
    "mfcc",
]

Samples = npt.NDArray[np.float64]

#: WAV inputs larger than this are refused before parsing (about 10 min at 8 kHz/16 bit).
MAX_AUDIO_BYTES = 16 * 1024 * 1024
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000


@dataclass(frozen=True)
class Audio:
    """Mono audio: float samples in [-1, 1] at ``rate`` Hz."""

    samples: Samples
    rate: int

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.samples) / self.rate


def _chunks(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8 : pos + 8 + size]
        if len(body) != size:
            raise MalformedError(f"WAV chunk {cid!r} is truncated")
        if cid in out:
            raise MalformedError(f"WAV chunk {cid!r} appears twice")
        out[cid] = body
        pos += 8 + size + (size & 1)
    return out


def decode_wav(data: bytes, *, max_bytes: int = MAX_AUDIO_BYTES) -> Audio:
    """Parse a PCM WAV file (8/16-bit, mono or stereo) into mono float samples.

    Raises:
        MalformedError: too large, not RIFF/WAVE, not integer PCM, an
            unsupported sample width, rate or channel count, or truncated.
    """
    if len(data) > max_bytes:
        raise MalformedError(f"audio exceeds {max_bytes} bytes")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise MalformedError("not a RIFF/WAVE file")
    chunks = _chunks(data)
    fmt = chunks.get(b"fmt ")
    pcm = chunks.get(b"data")
    if fmt is None or pcm is None or len(fmt) < 16:
        raise MalformedError("WAV file lacks a fmt or data chunk")
    tag, channels, rate, _brate, align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the subformat's first two bytes
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if tag != 1:
        raise MalformedError("WAV is not integer PCM")
    if channels not in (1, 2):
        raise MalformedError("WAV must be mono or stereo")
    if bits not in (8, 16) or align != channels * bits // 8:
        raise MalformedError("WAV sample width must be 8 or 16 bits")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise MalformedError(f"WAV sample rate must be {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    if len(pcm) % align:
        raise MalformedError("WAV data is not a whole number of frames")
    if bits == 16:
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    else:
        x = (np.frombuffer(pcm, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if channels == 2:
        x = x.reshape(-1, 2).mean(axis=1)
    return Audio(x, int(rate))


def encode_wav(audio: Audio) -> bytes:
    """Mono 16-bit PCM WAV bytes of ``audio`` (samples clipped to [-1, 1])."""
    pcm = (np.clip(audio.samples, -1.0, 1.0 - 1.0 / 32768) * 32768.0).round().astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, audio.rate, audio.rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


def frames(x: Samples, length: int, hop: int) -> npt.NDArray[np.float64]:
    """Overlapping frames of ``x`` as rows (the last partial frame is zero-padded)."""
    if len(x) < length:
        x = np.pad(x, (0, length - len(x)))
    n = 1 + (len(x) - length + hop - 1) // hop
    x = np.pad(x, (0, (n - 1) * hop + length - len(x)))
    idx = np.arange(length)[None, :] + hop * np.arange(n)[:, None]
    out: npt.NDArray[np.float64] = x[idx]
    return out


_MEL_CACHE: dict[tuple[int, int, int], npt.NDArray[np.float64]] = {}


def _mel_bank(rate: int, nfft: int, bands: int) -> npt.NDArray[np.float64]:
    key = (rate, nfft, bands)
    bank = _MEL_CACHE.get(key)
    if bank is None:
        top = 2595.0 * np.log10(1.0 + (rate / 2) / 700.0)
        hz = 700.0 * (10 ** (np.linspace(0.0, top, bands + 2) / 2595.0) - 1.0)
        bins = np.floor((nfft + 1) * hz / rate).astype(int)
        bank = np.zeros((bands, nfft // 2 + 1))
        for m in range(1, bands + 1):
            lo, mid, hi = bins[m - 1], bins[m], bins[m + 1]
            if mid > lo:
                bank[m - 1, lo:mid] = (np.arange(lo, mid) - lo) / (mid - lo)
            if hi > mid:
                bank[m - 1, mid:hi] = (hi - np.arange(mid, hi)) / (hi - mid)
        _MEL_CACHE[key] = bank
    return bank


def mfcc(audio: Audio, *, coefficients: int = 20, bands: int = 26, deltas: bool = True) -> npt.NDArray[np.float64]:
    """MFCC features (25 ms frames every 10 ms), optionally with deltas; one row per frame."""
    x = audio.samples
    x = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    length, hop = int(0.025 * audio.rate), int(0.010 * audio.rate)
    nfft = 1 << (length - 1).bit_length()
    f = frames(x, length, hop) * np.hamming(length)
    power = np.abs(np.fft.rfft(f, nfft)) ** 2 / nfft
    energies = np.log(power @ _mel_bank(audio.rate, nfft, bands).T + 1e-10)
    c: npt.NDArray[np.float64] = dct(energies, type=2, axis=1, norm="ortho")[:, :coefficients]
    if deltas:
        padded = np.pad(c, ((2, 2), (0, 0)), mode="edge")
        d = (padded[3:-1] - padded[1:-3] + 2 * (padded[4:] - padded[:-4])) / 10.0
        c = np.hstack([c, d])
    return c
