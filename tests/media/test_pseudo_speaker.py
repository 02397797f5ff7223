"""The pseudo-speaker voice conversion: streaming, per-utterance draws, speaker normalisation, the attacker."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter
from scipy.special import ndtri

from iotguard.errors import ConfigError
from iotguard.media import (
    DEFAULT_VOICE_METHOD,
    VOICE_METHODS,
    Audio,
    McAdams,
    PseudoSpeaker,
    evaluate_voice,
    voice_transform,
)
from iotguard.media.voice import _lpc
from iotguard.privacy.media_contract import ANONYMISERS, MediaKind
from iotguard.sim.media import synthetic_corpus

RATE = 8000


def _vowel(f0: float = 120.0, formant: float = 500.0, seconds: float = 0.5) -> Audio:
    n = int(RATE * seconds)
    pulses = np.zeros(n)
    pulses[:: int(RATE / f0)] = 1.0
    r = np.exp(-np.pi * 80 / RATE)
    x = lfilter([1.0], [1.0, -2 * r * np.cos(2 * np.pi * formant / RATE), r * r], pulses)
    return Audio(0.3 * x / np.abs(x).max(), RATE)


def _peak_hz(audio: Audio) -> float:
    a = _lpc(audio.samples[None, 2000:3600] * np.hanning(1600), 12)[0]
    return float(np.argmax(1.0 / np.abs(np.fft.rfft(a, 4096))) * RATE / 4096)


def _f0(audio: Audio) -> float:
    x = audio.samples[1000:3000]
    r = np.correlate(x, x, "full")[len(x) - 1 :]
    return RATE / (20 + int(np.argmax(r[20:160])))


@pytest.mark.parametrize(("size", "window"), [(37, 10.0), (997, 10.0), (37, 0.5), (997, 0.5)])
def test_stream_output_equals_whole_clip_and_latency_is_one_frame(size: int, window: float) -> None:
    # Version 3's low-pass, grid and jitter and version 4's rank window carry their state across
    # batches: pushes of less than a hop (one frame at a time) and of many frames give the one-shot
    # output, also when the clip is longer than the rank window (0.5 s: 50 frames of 150).
    audio = _vowel(seconds=1.5)
    whole = PseudoSpeaker(seed=5, equalisation_window=window).apply(audio)
    stream = PseudoSpeaker(seed=5, equalisation_window=window).stream(RATE)
    pieces, fed = [], 0
    for start in range(0, len(audio.samples), size):
        chunk = audio.samples[start : start + size]
        pieces.append(stream.push(chunk))
        fed += len(chunk)
        assert sum(len(p) for p in pieces) >= fed - stream.latency_samples
    pieces.append(stream.flush())
    y = np.clip(np.concatenate(pieces), -1, 1)
    assert len(y) == len(audio.samples)
    assert np.allclose(y, whole.samples)
    assert stream.latency_samples == int(0.020 * RATE)


def test_draws_are_fresh_per_utterance_from_the_os_by_default() -> None:
    audio = _vowel()
    t = PseudoSpeaker()
    assert not np.allclose(t.apply(audio).samples, t.apply(audio).samples)
    f0s = {round(_f0(PseudoSpeaker(seed=s, whisper=False).apply(audio))) for s in range(4)}
    assert len(f0s) > 1, "the target pitch must change per utterance"


def _long_term_db(audio: Audio) -> np.ndarray:  # type: ignore[type-arg]
    f = audio.samples[: len(audio.samples) // 160 * 160].reshape(-1, 160) * np.hanning(160)
    db = 10 * np.log10(np.mean(np.abs(np.fft.rfft(f, 256, axis=1)) ** 2, axis=0) + 1e-12)
    return db - db.mean()


def _timbre_distance(a: Audio, b: Audio) -> float:
    """RMS difference in dB of two clips' long-term spectra (level removed)."""
    return float(np.sqrt(np.mean((_long_term_db(a) - _long_term_db(b)) ** 2)))


def test_two_utterances_of_one_speaker_become_two_pseudo_speakers() -> None:
    # The same speaker saying the same thing twice: each utterance gets its own draws, so
    # the two outputs sound like different people (several dB apart in long-term spectrum,
    # different pitch). With the draws fixed they would differ only by excitation noise.
    audio = _vowel()
    # Version 2 draws a timbre; version 3 a dithered grid and a jitter amplitude instead.
    fixed = PseudoSpeaker(seed=1, wander=0.0, level_wander=0.0, f0_range=(120.0, 120.0), whisper=False,
                          dither=False, jitter=0.0)
    assert _timbre_distance(fixed.apply(audio), fixed.apply(audio)) < 1.2
    for seed in range(4):
        for t in (PseudoSpeaker(seed=seed, whisper=False), PseudoSpeaker.version_2(seed=seed, whisper=False)):
            outs = [t.apply(audio) for _ in range(3)]
            assert min(_timbre_distance(outs[i], outs[j]) for i, j in ((0, 1), (0, 2), (1, 2))) > 1.5
            assert len({round(_f0(o)) for o in outs}) > 1, "the target pitch must be drawn per utterance"


def test_a_seed_repeats_the_same_sequence_of_pseudo_speakers() -> None:
    # Determinism per seed (tests and benchmarks only): the n-th utterance of two transforms
    # with one seed is converted identically; another seed gives other pseudo-speakers.
    audio = _vowel()
    a, b, c = PseudoSpeaker(seed=21), PseudoSpeaker(seed=21), PseudoSpeaker(seed=22)
    for _ in range(2):
        ya, yb, yc = a.apply(audio), b.apply(audio), c.apply(audio)
        assert np.array_equal(ya.samples, yb.samples)
        assert not np.allclose(ya.samples, yc.samples)


def test_speakers_long_term_formant_does_not_survive() -> None:
    # Two speakers whose vowels differ by 400 Hz in formant, converted with the same draws:
    # the envelope's running mean is replaced by the pseudo-speaker's, so what came out is far
    # closer than what went in (the randomised vocoder's McAdams warp would keep the 400 Hz apart).
    low, high = _vowel(formant=500.0), _vowel(formant=900.0)
    assert abs(_peak_hz(high) - _peak_hz(low)) > 350
    out_low = PseudoSpeaker(seed=9, wander=0.0, level_wander=0.0).apply(low)
    out_high = PseudoSpeaker(seed=9, wander=0.0, level_wander=0.0).apply(high)
    assert abs(_peak_hz(out_high) - _peak_hz(out_low)) < 150


def test_output_level_does_not_follow_the_recording_level() -> None:
    quiet, loud = _vowel(), Audio(_vowel().samples * 3.0, RATE)
    a = PseudoSpeaker(seed=3, level_wander=0.0).apply(quiet).samples
    b = PseudoSpeaker(seed=3, level_wander=0.0).apply(loud).samples
    assert abs(np.sqrt(np.mean(a * a)) / np.sqrt(np.mean(b * b)) - 1.0) < 0.05


def _periodicity(audio: Audio) -> float:
    """Highest normalised autocorrelation at pitch lags (2.5-20 ms): near 1 for a voice, near 0 for noise."""
    x = audio.samples[1000:3000]
    r = np.correlate(x, x, "full")[len(x) - 1 :]
    return float(r[20:160].max() / r[0])


def test_whispered_output_carries_no_pitch_or_intonation() -> None:
    # The default excites every frame with noise: the speaker's pitch (and so their intonation
    # and voicing) does not reach the output, which the pulse-train source of version 1 kept.
    for f0 in (110.0, 210.0):
        audio = _vowel(f0=f0)
        assert _periodicity(audio) > 0.8
        assert max(_periodicity(PseudoSpeaker(seed=seed).apply(audio)) for seed in range(3)) < 0.15
        pulsed = [_periodicity(PseudoSpeaker(seed=seed, whisper=False).apply(audio)) for seed in range(3)]
        assert np.mean(pulsed) > 0.2


def test_loudness_contour_does_not_survive() -> None:
    # The rhythm of the energy contour identifies speakers (ADR 0902): a vowel whose second half
    # is 20 dB quieter leaves at one level throughout by default; loudness_contour=1 keeps the drop.
    samples = _vowel(seconds=0.6).samples.copy()
    samples[2400:] *= 0.1
    audio = Audio(samples, RATE)

    def drop(t: PseudoSpeaker) -> float:
        y = t.apply(audio).samples
        return float(np.sqrt(np.mean(y[2800:4400] ** 2) / np.mean(y[400:2000] ** 2)))

    for seed in range(3):
        assert abs(drop(PseudoSpeaker(seed=seed, level_wander=0.0)) - 1.0) < 0.1
        assert drop(PseudoSpeaker(seed=seed, level_wander=0.0, loudness_contour=1.0)) < 0.2


def test_digital_silence_stays_silent() -> None:
    silence = np.zeros(1600)
    y = PseudoSpeaker(seed=1).apply(Audio(np.concatenate([silence, _vowel().samples, silence]), RATE)).samples
    assert not y[:1400].any() and not y[-1400:].any()
    assert np.abs(y[2000:5000]).max() > 0.01


def test_receipt_parameters_name_ranges_not_the_secret_draws() -> None:
    p = PseudoSpeaker().params()
    assert p["method"] == "pseudo-speaker" and p["draws"] == "per-utterance, wandering"
    assert p["version"] == 4 and p["excitation"] == "whispered (noise)" and p["loudness_contour"] == 0.0
    assert p["trajectory_lowpass_hz"] == 10.0 and p["quantisation_step"] == 2.0 and p["jitter"] == 3.0
    assert p["quantisation_dither"] == "per utterance" and p["timbre_spread"] == 0.0 and p["wander"] == 0.0
    assert p["rank_equalisation"] == 0.5 and p["equalisation_window_s"] == 10.0 and p["level_wander"] == 0.0
    assert p["envelope"] == "speaker-normalised (mean)"
    assert "grid_offset" not in p and "jitter_amplitude" not in p  # the draws themselves are never reported
    # The receipt names what ran: version 3's steps are version 3, without version 4's parameters,
    # and version 2's are version 2, without version 3's.
    v3 = PseudoSpeaker.version_3().params()
    assert v3["version"] == 3 and v3["jitter"] == 4.0 and v3["level_wander"] == 0.5
    assert v3["envelope"] == "speaker-normalised (mean and spread)"
    assert not {"rank_equalisation", "equalisation_window_s"} & set(v3)
    old = PseudoSpeaker.version_2().params()
    assert old["version"] == 2 and old["timbre_spread"] == 0.15 and old["wander"] == 0.3
    assert not {"trajectory_lowpass_hz", "quantisation_step", "jitter", "quantisation_dither"} & set(old)
    assert PseudoSpeaker(rank_equalisation=0.0).params()["version"] == 4  # the spread is not normalised
    assert "rank_equalisation" not in PseudoSpeaker(rank_equalisation=0.0).params()
    assert PseudoSpeaker.version_3(jitter=0.0, quantisation_step=0.0).params()["version"] == 3  # the low-pass
    assert PseudoSpeaker(quantisation_step=0.0).params().keys() >= {"jitter", "trajectory_lowpass_hz"}
    assert PseudoSpeaker(dither=False).params()["quantisation_dither"] == "none"
    assert PseudoSpeaker(whisper=False).params()["excitation"] == "synthetic"
    assert "target_f0" not in p and "f0_range_hz" not in p and "intonation" not in p  # no pitch when whispered
    pitched = PseudoSpeaker(whisper=False).params()
    assert pitched["f0_range_hz"] == [90.0, 240.0] and "intonation" in pitched


def test_method_is_registered_and_allowed_in_contracts() -> None:
    assert isinstance(voice_transform("pseudo-speaker"), PseudoSpeaker)
    assert "pseudo-speaker" in VOICE_METHODS and "pseudo-speaker" in ANONYMISERS[MediaKind.AUDIO]
    assert ANONYMISERS[MediaKind.AUDIO][0] == DEFAULT_VOICE_METHOD


@pytest.mark.parametrize("bad", [{"warp_range": (0.3, -0.3)}, {"f0_range": (20.0, 90.0)}, {"wander": 2.0},
                                 {"wander_tau": 0.0}, {"dynamics_range": (0.1, 1.0)}, {"colour": "blue"},
                                 {"loudness_contour": 1.5}, {"jitter": -1.0}, {"quantisation_step": 9.0},
                                 {"trajectory_lowpass": 60.0}, {"rank_equalisation": 1.5},
                                 {"equalisation_window": 0.1}])
def test_bad_parameters_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        voice_transform("pseudo-speaker", **bad)


def test_semi_informed_attacker_does_worse_than_against_mcadams() -> None:
    corpus = synthetic_corpus(speakers=4, per_digit=6, seed=0)
    mcadams = evaluate_voice(corpus, McAdams(), components=8, enrol_per_speaker=8)
    ours = evaluate_voice(corpus, PseudoSpeaker(seed=2), components=8, enrol_per_speaker=8)
    assert ours.eer_semi_informed > mcadams.eer_semi_informed + 0.1
    assert ours.accuracy > 0.7  # the spoken content survives


def _phonetic_trajectory(rng: np.random.Generator, frames: int = 200) -> np.ndarray:  # type: ignore[type-arg]
    """A speaker-normalised trajectory: segments of 10 frames at random targets, in generic-spread units."""
    spread = 0.5 / (1 + np.arange(30))
    return np.repeat(rng.normal(0.0, 1.0, (frames // 10, 30)), 10, axis=0) * spread


def test_quantisation_grid_is_dithered_per_utterance() -> None:
    # Within an utterance every frame lies on one grid (so the step holds); the grid's offset
    # is drawn per utterance and per coefficient, so utterances are not on a common grid an
    # attacker could learn. Without dither every utterance is on the grid through 0.
    spread = 0.5 / (1 + np.arange(30))
    t = PseudoSpeaker(seed=4, jitter=0.0, trajectory_lowpass=0.0)
    norm = _phonetic_trajectory(np.random.default_rng(0))
    offsets = []
    for _ in range(3):
        draws = t._draw(RATE)
        shaped = t._shape_trajectory(draws, norm, 100.0, spread)
        steps = shaped / (2.0 * spread)
        offset = steps[0] - np.round(steps[0])
        assert np.allclose(steps - offset, np.round(steps - offset), atol=1e-9)
        assert np.allclose(np.mod(offset + 0.5, 1.0) - 0.5, np.mod(draws.grid_offset + 0.5, 1.0) - 0.5, atol=1e-9)
        offsets.append(draws.grid_offset)
    assert min(np.abs(offsets[i] - offsets[j]).mean() for i, j in ((0, 1), (0, 2), (1, 2))) > 0.1
    fixed = PseudoSpeaker(seed=4, jitter=0.0, trajectory_lowpass=0.0, dither=False)
    steps = fixed._shape_trajectory(fixed._draw(RATE), norm, 100.0, spread) / (2.0 * spread)
    assert np.allclose(steps, np.round(steps))


def test_fine_articulation_detail_does_not_survive_the_grid_and_jitter() -> None:
    # Check for speaker detail carried through: two speakers say the same word, one with a small
    # fast wobble on the trajectory (half the generic spread at 30 Hz, the kind of fine
    # detail that separates speakers once their means and spreads are normalised). With the same
    # draws, version 3 turns the pair into outputs whose difference is not the wobble: the
    # low-pass and the grid leave the two mostly identical, and the jitter drawn per utterance
    # makes two utterances of the *same* input differ more than the two speakers do.
    # Without the low-pass more of the wobble crosses the grid; without the grid all of it passes.
    spread = 0.5 / (1 + np.arange(30))
    rng = np.random.default_rng(1)
    plain = _phonetic_trajectory(rng)
    wobbly = plain + np.sin(2 * np.pi * 30.0 * np.arange(len(plain)) / 100.0 + 0.5)[:, None] * spread / 2.0

    def shaped(t: PseudoSpeaker, norm: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        return t._shape_trajectory(t._draw(RATE), norm, 100.0, spread) / spread

    grid_only = (PseudoSpeaker(seed=6, jitter=0.0), PseudoSpeaker(seed=6, jitter=0.0))
    same = np.isclose(shaped(grid_only[0], plain), shaped(grid_only[1], wobbly)).mean()
    assert same > 0.9
    unfiltered = (PseudoSpeaker(seed=6, jitter=0.0, trajectory_lowpass=0.0),) * 2
    assert np.isclose(shaped(unfiltered[0], plain), shaped(unfiltered[1], wobbly)).mean() < 0.88
    bare = (PseudoSpeaker(seed=6, jitter=0.0, quantisation_step=0.0, trajectory_lowpass=0.0),) * 2
    assert np.isclose(shaped(bare[0], plain), shaped(bare[1], wobbly)).mean() < 0.1

    t_plain, t_wobbly = PseudoSpeaker(seed=6), PseudoSpeaker(seed=6)
    between = [np.abs(shaped(t_plain, plain) - shaped(t_wobbly, wobbly)).mean() for _ in range(8)]
    t_again = PseudoSpeaker(seed=7)
    within = [np.abs(shaped(t_again, plain) - shaped(t_again, plain)).mean() for _ in range(8)]
    assert np.mean(within) > 2.0 * np.mean(between)
    # On one fixed grid, what still tells two utterances of one input apart is the jitter.
    on_grid = PseudoSpeaker(seed=7, dither=False)
    assert np.mean([np.abs(shaped(on_grid, plain) - shaped(on_grid, plain)).mean() for _ in range(8)]) > 0.3


def test_ranks_are_taken_causally_within_the_window() -> None:
    # The rank of each frame's coefficient among the window's frames (this one included), as a
    # Gaussian quantile, checked against a direct count; the window's frames are all that is kept.
    t = PseudoSpeaker(seed=3)
    cep = np.round(np.random.default_rng(2).normal(size=(130, 30)), 1)  # rounded: ties occur
    draws = t._draw(RATE)
    ranks = np.vstack([t._equalise(draws, cep[:70], 40), t._equalise(draws, cep[70:], 40)])
    assert draws.ranked is not None and len(draws.ranked) == 39
    for i in (0, 1, 39, 40, 69, 70, 129):
        window = cep[max(0, i - 39) : i + 1]
        u = ((window < cep[i]).sum(axis=0) + 0.5 * (window == cep[i]).sum(axis=0) + 0.5) / (len(window) + 1)
        assert np.allclose(ranks[i], ndtri(u))
    assert np.allclose(ranks[0], 0.0)  # a first frame is the median of itself


def test_a_speakers_skewed_articulation_does_not_survive_the_ranks() -> None:
    # Check for speaker detail carried through: two speakers articulate the same word, one of them
    # skewing every coefficient's movements (a monotone distortion, re-centred and re-scaled to the
    # same mean and spread, so mean and spread normalisation cannot see it). The ranks of the two
    # are identical, so version 4 keeps half of the difference that mean normalisation leaves;
    # version 3 keeps all of it. And the step runs in the stream: without it the output changes.
    spread = 0.5 / (1 + np.arange(30))
    plain = _phonetic_trajectory(np.random.default_rng(3))
    skewed = np.sign(plain) * np.abs(plain / spread) ** 1.8 * spread
    skewed = (skewed - skewed.mean(axis=0)) / skewed.std(axis=0) * plain.std(axis=0) + plain.mean(axis=0)
    mean, sd = np.broadcast_to(plain.mean(axis=0), plain.shape), np.broadcast_to(plain.std(axis=0), plain.shape)

    def difference(t: PseudoSpeaker) -> np.ndarray:  # type: ignore[type-arg]
        a = t._normalise(t._draw(RATE), plain, mean, sd, spread, 1000)
        b = t._normalise(t._draw(RATE), skewed, mean, sd, spread, 1000)
        return np.abs(a - b)

    before = difference(PseudoSpeaker.version_3())
    assert before.mean() > 0.2 * spread.mean()
    assert np.allclose(difference(PseudoSpeaker()), 0.5 * difference(PseudoSpeaker(rank_equalisation=0.0)))
    assert difference(PseudoSpeaker()).mean() < 0.6 * before.mean()
    audio = _vowel()
    assert not np.allclose(PseudoSpeaker(seed=8).apply(audio).samples,
                           PseudoSpeaker(seed=8, rank_equalisation=0.0).apply(audio).samples)
