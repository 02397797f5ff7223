"""Media privacy benchmark: voice anonymisation attacked on FSDD, face redaction at 640x480.

Voice (Free Spoken Digit Dataset, 6 speakers x 500 recordings at 8 kHz, CC BY-SA 4.0,
https://github.com/Jakobovski/free-spoken-digit-dataset; its folder is given
with --fsdd: the dataset is not part of this repository): for the original audio, the McAdams transform (VoicePrivacy
B2 baseline), iotguard's randomised vocoder and its pseudo-speaker conversion (the
default), all in one run and on one split,
the built-in attacker's speaker-verification EER (ignorant and semi-informed; the
lowest of its four back ends: LDA embedding on the speech frames, the same on all
frames, on all frames but each utterance's first 200 ms, GMM-UBM; each is printed and in the results' eer_by_attacker), spoken-digit accuracy, and the
transform's real-time factor on one core.

Images: 640x480 frames, each with one face from the LFW subset that scikit-image
ships (100 faces, 25x25, from Labeled Faces in the Wild, Huang et al. 2007, a
research dataset collected from the web; scikit-image's BSD-3 package is the
source, nothing is stored in this repository) scaled to 60-140 px on a blurred
background. Face recall of the independent detector after redaction, people still
counted, and redaction frames per second on one core.

Headline: semi-informed EER of iotguard's default transform (pseudo-speaker) vs McAdams (ratio = ours /
McAdams, higher is better); the issue's goals are reported with each figure.

    python bench/media.py --fsdd DIR [--quick] [--voice-only] [--out bench/results/media.json]
    python bench/media.py --images-only [--quick] [--out bench/results/media_image_full.json]

--voice-only runs the voice part alone and writes bench/results/media_voice.json; a full
(not --quick) voice-only run also replaces the voice keys (headline, voice, the three voice
goals) of media.json, keeping the image part's. --images-only runs the image part alone
(no FSDD needed) and writes bench/results/media_image_full.json (300 face frames), or
media_image.json with --quick (40); a full one also replaces media.json's image part
(images, images_people, images_headline, the image goals, images_date). --refresh-images
measures nothing and puts media_image_full.json's image part into media.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from iotguard.media import McAdams, PseudoSpeaker, RandomisedVocoder, Utterance, decode_wav, evaluate_voice
from iotguard.media.evaluation import evaluate_images
from iotguard.media.image import FaceDetector, FaceRedactor, cv2
from iotguard.sim.camera import people_scene

RESULTS = Path(__file__).parent / "results"

GOALS = {"eer_semi_informed_min": 0.35, "accuracy_drop_max": 0.10, "voice_rtf_min": 50.0,
         "face_recall_after_max": 0.01, "people_recall_kept_min": 0.90, "fps_min": 15.0}


def load_fsdd(root: Path, limit: int, seed: int = 0) -> list[Utterance]:
    files = sorted((root / "recordings").glob("*.wav"))
    if not files:
        sys.exit(f"no FSDD recordings under {root}/recordings (pass --fsdd)")
    if limit and limit < len(files):
        rng = np.random.default_rng(seed)
        files = [files[i] for i in sorted(rng.choice(len(files), limit, replace=False))]
    out = []
    for f in files:
        digit, speaker, _ = f.stem.split("_")
        out.append(Utterance(speaker, digit, decode_wav(f.read_bytes())))
    return out


def _lfw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        sys.exit("the image part needs scikit-image's sample data: pip install scikit-image==0.26.0")
    faces = (data.lfw_subset()[:100] * 255).astype(np.uint8)
    background = cv2.GaussianBlur(cv2.resize(data.astronaut()[300:, :, ::-1], (640, 480)), (0, 0), 8)
    return faces, background


def face_frames(count: int, seed: int = 0) -> tuple[list[np.ndarray], list[list[tuple[int, int, int, int]]],
                                                      list[np.ndarray], list[int]]:
    """Frames with one LFW face each (60-140 px, a random gain, offset and sensor noise), the face boxes,
    the attacker's gallery (the 100 LFW photos as they are) and each frame's identity in it."""
    faces, background = _lfw()
    rng = np.random.default_rng(seed)
    frames, truth, identities = [], [], []
    for i in range(count):
        frame = background.copy()
        size = int(rng.integers(60, 141))
        face = cv2.resize(faces[i % len(faces)], (size, size)).astype(np.float64)
        face = face * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20) + rng.normal(0, 4, face.shape)
        face = cv2.cvtColor(np.clip(face, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        x, y = int(rng.integers(0, 640 - size)), int(rng.integers(0, 480 - size))
        frame[y : y + size, x : x + size] = face
        frames.append(frame)
        truth.append([(x, y, size, size)])
        identities.append(i % len(faces))
    gallery = [cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in faces]
    return frames, truth, gallery, identities


def people_frames(count: int, seed: int = 1) -> tuple[list[np.ndarray], list[list[tuple[int, int, int, int]]],
                                                        list[list[tuple[int, int, int, int]]]]:
    """Generated frames with 1-3 standing figures (160-420 px tall, LFW faces as heads), their person
    boxes and face boxes (iotguard.sim.camera: no permissively licensed person set with boxes is at hand)."""
    faces, background = _lfw()
    rng = np.random.default_rng(seed)
    frames, people, heads = [], [], []
    for i in range(count):
        frame, bodies, face_boxes = people_scene(background, [faces[(3 * i + j) % len(faces)] for j in range(3)], rng)
        frames.append(frame)
        people.append(bodies)
        heads.append(face_boxes)
    return frames, people, heads


#: Face frames of a run: a full run needs enough faces to show 1 % (one face in 99 is already 1.01 %).
FACE_FRAMES = {"quick": 40, "full": 300}


def wilson(found: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a proportion ``found / total``."""
    if total == 0:
        return 0.0, 1.0
    p = found / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def image_part(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Face redaction on the LFW frames; people kept on the generated figures, with and without pixelation."""
    frames, truth, gallery, identities = face_frames(FACE_FRAMES["quick" if quick else "full"])
    faces = evaluate_images(frames, FaceRedactor(), truth=truth, gallery=gallery, identities=identities)
    crowd, people, heads = people_frames(20 if quick else 40)
    on_people = {f"block_{block}": evaluate_images(crowd, FaceRedactor(block=block), truth=heads, people_truth=people)
                 for block in (0, 8)}
    kept = on_people["block_0"].people_recall_kept
    print(f"images: {faces.images} frames 640x480 with one LFW face, {faces.faces_before} faces found by the "
          f"independent detectors")
    print(f"  faces found after redaction {100 * faces.face_recall_after:.1f}% "
          f"({', '.join(f'{k} {100 * v:.1f}%' for k, v in faces.face_recall_by_detector.items())}), "
          f"{faces.frames_per_second:.1f} frames/s on one core")
    for name, c in faces.faces_by_detector.items():
        low, high = wilson(c["found"], c["total"])
        print(f"  {name}: {c['found']} of {c['total']} faces found after redaction, Wilson 95% interval "
              f"{100 * low:.2f}-{100 * high:.2f}%")
    print(f"  re-identification top-1 (gallery of {faces.reid_gallery}): before {faces.reid_top1_before}, "
          f"after {faces.reid_top1_after}")
    for name, e in on_people.items():
        print(f"  {name}: {e.images} generated frames, {e.people_annotated} people, body-detector recall "
              f"{e.people_recall_original} -> {e.people_recall_redacted} (kept {e.people_recall_kept}), "
              f"small faces found after {100 * e.face_recall_after:.1f}% of {e.faces_before}")
    goals = {
        "face_recall_after_redaction": {"value": faces.face_recall_after, "goal": "<= 0.01",
                                        "met": faces.face_recall_after <= GOALS["face_recall_after_max"]},
        "people_recall_kept": {"value": kept, "goal": ">= 0.90",
                               "met": kept is not None and kept >= GOALS["people_recall_kept_min"]},
        "frames_per_second_640x480": {"value": faces.frames_per_second, "goal": ">= 15",
                                      "met": faces.frames_per_second >= GOALS["fps_min"]},
    }
    intervals = {name: {**c, "wilson_95": wilson(c["found"], c["total"])}
                 for name, c in faces.faces_by_detector.items()}
    goals["face_recall_after_redaction"]["by_detector"] = intervals
    return goals, {"faces": faces.to_dict(), "people": {k: e.to_dict() for k, e in on_people.items()}}


def redaction_speed(frames: list[np.ndarray]) -> dict[str, float]:
    """CPU time per frame of the default redactor, of session 9's (without the unequalised pass, ADR 0954),
    of session 5's (the same cascade in one pass, ADR 0950)
    and of session 4's (three cascades, mirrored profiles, scale 1.1), interleaved frame by frame so that the
    machine's load falls on all alike."""
    ours, one_pass = FaceRedactor(), FaceRedactor(margin=0.3, detector=FaceDetector(large_band=1.0, plain_width=0))
    before = FaceRedactor(detector=FaceDetector(
        cascades=("frontalface_default", "frontalface_alt", "profileface"), scale_factor=1.1, large_band=1.0,
        plain_width=0))
    equalised_only = FaceRedactor(detector=FaceDetector(plain_width=0))  # session 9's (ADR 0953)
    spent = {"default": 0.0, "session9": 0.0, "session5": 0.0, "session4": 0.0}
    for frame in frames:
        for name, redactor in (("default", ours), ("session9", equalised_only), ("session5", one_pass),
                               ("session4", before)):
            t = time.process_time()
            redactor.apply(frame)
            spent[name] += time.process_time() - t
    return {f"{k}_frames_per_second": len(frames) / max(v, 1e-9) for k, v in spent.items()}


def images_only(args: argparse.Namespace) -> None:
    started = time.time()
    load_before = os.getloadavg()
    with threadpool_limits(1):
        goals, figures = image_part(args.quick)
        speed = redaction_speed(face_frames(40 if args.quick else 100)[0])
    load_after = os.getloadavg()
    ratio = speed["default_frames_per_second"] / speed["session5_frames_per_second"]
    print(f"  redaction speed, interleaved: {speed['default_frames_per_second']:.1f} frames/s against "
          f"{speed['session5_frames_per_second']:.1f} for session 5's one-pass detector (ratio {ratio:.2f}) and "
          f"{speed['session4_frames_per_second']:.1f} for session 4's; session 9's (no unequalised pass) "
          f"{speed['session9_frames_per_second']:.1f}")
    for name, g in goals.items():
        print(f"  goal {name:<30} {g['value'] if g['value'] is None else round(g['value'], 4)!s:>10}  "
              f"{g['goal']:<8} {'met' if g['met'] else 'MISSED'}")
    out = {
        "benchmark": "media_image",
        "headline": {"name": "face redaction frames per second at 640x480, one core (CPU time)",
                     "unit": "frames/s", "value": speed["default_frames_per_second"],
                     "baseline_name": "session 5's redactor (the same cascade in one pass over all sizes) on the "
                                      "same frames, interleaved",
                     "baseline_value": speed["session5_frames_per_second"], "ratio": ratio, "goal": 15.0,
                     "session4_frames_per_second": speed["session4_frames_per_second"],
                     "session9_frames_per_second": speed["session9_frames_per_second"]},
        "goals": goals, "images": figures, "quick": args.quick, "seconds": time.time() - started,
        "machine": {**machine(), "load_avg_1m_at_start": load_before[0], "load_avg_at_start": load_before,
                    "load_avg_at_end": load_after},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = Path(args.out or RESULTS / ("media_image.json" if args.quick else "media_image_full.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"results written to {path}")
    if not args.quick and not args.out:
        merge_images(path, RESULTS / "media.json")


VOICE_KEYS = ("headline", "voice")  # media.json keys the voice part owns (with the voice goals)
VOICE_GOALS = ("eer_semi_informed", "accuracy_drop", "voice_real_time_factor")


def voice_part(utterances: list[Utterance]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the voice evaluation; returns (voice goals, the voice keys of media.json)."""
    seconds = sum(u.audio.seconds for u in utterances)
    results = []
    for transform in (None, McAdams(), RandomisedVocoder(), PseudoSpeaker()):
        t0 = time.time()
        e = evaluate_voice(utterances, transform)
        results.append(e)
        print(f"  {e.method:<20} done in {time.time() - t0:.0f} s", file=sys.stderr)
    base, mcadams, _vocoder, ours = results
    print(f"voice: {len(utterances)} FSDD recordings ({seconds:.0f} s of audio), "
          f"{len({u.speaker for u in utterances})} speakers")
    print(f"{'':<22}{'EER ignorant':>14}{'EER semi-inf.':>15}{'digit acc.':>12}{'acc. (orig. model)':>20}{'RTF':>8}")
    for e in results:
        rtf = f"{e.real_time_factor:.0f}x" if e.real_time_factor else "-"
        print(f"{e.method:<22}{100 * e.eer_ignorant:>13.1f}%{100 * e.eer_semi_informed:>14.1f}%"
              f"{100 * e.accuracy:>11.1f}%{100 * e.accuracy_original_model:>19.1f}%{rtf:>8}")
    print("semi-informed EER by back end (the lowest is reported above):")
    for e in results:
        by = ", ".join(f"{name} {100 * eer['semi_informed']:.1f}%" for name, eer in e.eer_by_attacker.items())
        print(f"  {e.method:<20} {by}")
    drop = base.accuracy - ours.accuracy
    goals = {
        "eer_semi_informed": {"value": ours.eer_semi_informed, "goal": ">= 0.35",
                              "met": ours.eer_semi_informed >= GOALS["eer_semi_informed_min"]},
        "accuracy_drop": {"value": drop, "goal": "<= 0.10", "met": drop <= GOALS["accuracy_drop_max"]},
        "voice_real_time_factor": {"value": ours.real_time_factor, "goal": ">= 50",
                                   "met": (ours.real_time_factor or 0) >= GOALS["voice_rtf_min"]},
    }
    keys = {
        "headline": {
            "name": "semi-informed speaker-verification EER on FSDD after anonymisation",
            "unit": "EER", "value": ours.eer_semi_informed,
            "method": ours.method, "params": ours_params(),
            "baseline_name": "McAdams transform (VoicePrivacy B2) on the same split",
            "baseline_value": mcadams.eer_semi_informed,
            "ratio": ours.eer_semi_informed / max(mcadams.eer_semi_informed, 1e-9), "goal": 0.35,
        },
        "voice": {"recordings": len(utterances), "audio_seconds": seconds,
                  "results": [e.to_dict() for e in results]},
    }
    return goals, keys


def ours_params() -> dict[str, Any]:
    """The default transform's receipt parameters (what was measured)."""
    return PseudoSpeaker().params()


def print_goals(goals: dict[str, Any]) -> None:
    for name, g in goals.items():
        print(f"  goal {name:<30} {g['value'] if g['value'] is None else round(g['value'], 4)!s:>10}  "
              f"{g['goal']:<8} {'met' if g['met'] else 'MISSED'}")


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
            "note": "one core (thread pools limited to 1)"}


def merge_voice(path: Path, goals: dict[str, Any], keys: dict[str, Any]) -> None:
    """Replace the voice keys and voice goals of an existing media.json, keeping the image part's."""
    merge_part(path, goals, keys, "voice_date", datetime.now(UTC).isoformat(timespec="seconds"))


def merge_part(path: Path, goals: dict[str, Any], keys: dict[str, Any], stamp: str, date: str) -> None:
    """Replace one part's keys and goals of an existing media.json (``stamp``: when that part was measured)."""
    if not path.exists():
        return
    merged = json.loads(path.read_text())
    merged.update(keys)
    merged.setdefault("goals", {}).update(goals)
    merged[stamp] = date
    path.write_text(json.dumps(merged, indent=1, default=float) + "\n")


def merge_images(full: Path, path: Path) -> None:
    """Put a full ``--images-only`` run's figures and goals into media.json (its image part, with the run's date)."""
    run = json.loads(full.read_text())
    if run.get("quick"):
        return
    merge_part(path, run["goals"], {"images": run["images"]["faces"], "images_people": run["images"]["people"],
                                    "images_headline": run["headline"]}, "images_date", run["date"])


def main_voice_only(args: argparse.Namespace) -> None:
    """``--voice-only``: the voice part alone, to media_voice.json, merged into media.json's voice keys."""
    started = time.time()
    with threadpool_limits(1):
        utterances = load_fsdd(Path(args.fsdd), 600 if args.quick else 0)
        goals, keys = voice_part(utterances)
    print_goals(goals)
    out = {"benchmark": "media-voice", **keys, "goals": goals, "quick": args.quick,
           "seconds": time.time() - started, "machine": machine(),
           "date": datetime.now(UTC).isoformat(timespec="seconds")}
    voice_out = Path(args.out).with_name("media_voice.json") if args.out else RESULTS / "media_voice.json"
    voice_out.parent.mkdir(parents=True, exist_ok=True)
    voice_out.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"results written to {voice_out}")
    if not args.quick:
        merge_voice(Path(args.out) if args.out else RESULTS / "media.json", goals, keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 recordings, 40 face frames (about a minute or two)")
    ap.add_argument("--fsdd", help="folder of the Free Spoken Digit Dataset (holds recordings/)")
    ap.add_argument("--out", default=None, help="results file (default bench/results/media.json, or media_image.json)")
    ap.add_argument("--voice-only", action="store_true",
                    help="only the voice part: writes media_voice.json next to --out and, unless --quick, "
                         "replaces the voice keys of media.json (the image part's stay)")
    ap.add_argument("--refresh-images", action="store_true",
                    help="measure nothing: put media_image_full.json's figures and goals into media.json")
    ap.add_argument("--images-only", action="store_true",
                    help="only the image part; results in bench/results/media_image_full.json "
                         "(--quick: media_image.json)")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    if args.refresh_images:
        merge_images(RESULTS / "media_image_full.json", RESULTS / "media.json")
        return
    if args.images_only:
        images_only(args)
        return
    if not args.fsdd:
        ap.error("--fsdd is required unless --images-only")
    if args.voice_only:
        main_voice_only(args)
        return
    started = time.time()
    with threadpool_limits(1):
        utterances = load_fsdd(Path(args.fsdd), 600 if args.quick else 0)
        voice_goals, voice_keys = voice_part(utterances)
        image_goals, images = image_part(args.quick)
    goals = {**voice_goals, **image_goals}
    print_goals(goals)
    out: dict[str, Any] = {
        "benchmark": "media",
        "headline": voice_keys["headline"],
        "goals": goals,
        "voice": voice_keys["voice"],
        "images": images,
        "quick": args.quick,
        "seconds": time.time() - started,
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = Path(args.out) if args.out else RESULTS / "media.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
