"""``iotguard media``: anonymise voice and images, and attack the result with the built-in attacker.

``transform voice|image IN OUT`` — IN and OUT are each a file or a
directory of files (names kept). ``evaluate voice DIR`` reads WAV files
named ``LABEL_SPEAKER_*.wav`` (the Free Spoken Digit Dataset's naming) and
reports speaker-verification EERs and spoken-content accuracy;
``evaluate image DIR`` reads PNG/JPEG files and reports what independent
face detectors, a re-identification attacker (each image's own face,
shifted, enrolled as its identity) and a body detector still find after
redaction. With
``--json`` the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from iotguard.errors import ConfigError, MalformedError

__all__ = ["register"]

#: Most files one command reads from a directory.
MAX_FILES = 20_000
_AUDIO = (".wav",)
_IMAGE = (".png", ".jpg", ".jpeg")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``iotguard media`` and its subcommands."""
    parser = subparsers.add_parser("media", help="voice and image privacy at the sensor: transform and evaluate")
    sub = parser.add_subparsers(dest="media_command", metavar="SUBCOMMAND", required=True)
    t = sub.add_parser("transform", help="anonymise voice (WAV) or redact faces (PNG/JPEG); IN/OUT file or directory")
    t.add_argument("kind", choices=("voice", "image"))
    t.add_argument("input", metavar="IN")
    t.add_argument("output", metavar="OUT")
    t.add_argument("--method", help="voice: pseudo-speaker (default), randomised-vocoder or mcadams; "
                                    "image: face-redact (default)")
    t.add_argument("--block", type=int, default=0,
                   help="image: also pixelate the whole frame in blocks of this many pixels (default off)")
    t.set_defaults(func=_transform)
    e = sub.add_parser("evaluate", help="attack the transform: speaker-verification EER, content accuracy, "
                                        "face detection, re-identification and people detection after redaction")
    e.add_argument("kind", choices=("voice", "image"))
    e.add_argument("directory", metavar="DIR")
    e.add_argument("--method", help="transform to evaluate (default: the strongest shipped)")
    e.add_argument("--limit", type=int, default=0, help="evaluate at most this many files (spread over the set)")
    e.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    e.set_defaults(func=_evaluate)


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"{path} is neither a file nor a directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ConfigError(f"{path} holds no {'/'.join(suffixes)} files")
    if len(files) > MAX_FILES:
        raise ConfigError(f"{path} holds more than {MAX_FILES} files")
    return files


def _targets(inp: Path, out: Path, files: list[Path]) -> list[Path]:
    if inp.is_file():
        return [out / inp.name] if out.is_dir() else [out]
    out.mkdir(parents=True, exist_ok=True)
    return [out / f.name for f in files]


def _transform(args: argparse.Namespace) -> int:
    from iotguard.media import DEFAULT_VOICE_METHOD, decode_wav, encode_wav, voice_transform
    from iotguard.media.image import FaceRedactor, decode_image, encode_image

    inp, out = Path(args.input), Path(args.output)
    rejected = 0
    if args.kind == "voice":
        transform = voice_transform(args.method or DEFAULT_VOICE_METHOD)
        files = _files(inp, _AUDIO)
        for src, dst in zip(files, _targets(inp, out, files), strict=True):
            try:
                dst.write_bytes(encode_wav(transform.apply(decode_wav(src.read_bytes()))))
            except MalformedError as exc:
                rejected += 1
                print(f"{src.name}: rejected [{exc.code}]: {exc}", file=sys.stderr)
        print(f"{len(files) - rejected} file(s) anonymised with {transform.name}: {json.dumps(transform.params())}")
    else:
        if args.method not in (None, "face-redact"):
            raise ConfigError(f"unknown image method {args.method!r} (face-redact)")
        redactor = FaceRedactor(block=args.block)
        files = _files(inp, _IMAGE)
        faces = 0
        for src, dst in zip(files, _targets(inp, out, files), strict=True):
            try:
                frame, n = redactor.apply(decode_image(src.read_bytes()))
            except MalformedError as exc:
                rejected += 1
                print(f"{src.name}: rejected [{exc.code}]: {exc}", file=sys.stderr)
                continue
            faces += n
            codec = "jpeg" if dst.suffix.lower() in (".jpg", ".jpeg") else "png"
            dst.write_bytes(encode_image(frame, codec))
        print(f"{len(files) - rejected} image(s) redacted, {faces} face(s): {json.dumps(redactor.params())}")
    return 1 if rejected else 0


def _spread(files: list[Path], limit: int) -> list[Path]:
    if limit <= 0 or limit >= len(files):
        return files
    step = len(files) / limit
    return [files[int(i * step)] for i in range(limit)]


def _evaluate(args: argparse.Namespace) -> int:
    from iotguard.media import DEFAULT_VOICE_METHOD, Utterance, decode_wav, evaluate_voice, voice_transform
    from iotguard.media.evaluation import evaluate_images
    from iotguard.media.image import FaceRedactor, decode_image

    directory = Path(args.directory)
    figures: dict[str, Any]
    if args.kind == "voice":
        utterances = []
        for f in _spread(_files(directory, _AUDIO), args.limit):
            parts = f.stem.split("_")
            if len(parts) < 3:
                raise ConfigError(f"{f.name}: voice files must be named LABEL_SPEAKER_N.wav")
            utterances.append(Utterance(parts[1], parts[0], decode_wav(f.read_bytes())))
        transform = voice_transform(args.method or DEFAULT_VOICE_METHOD)
        base = evaluate_voice(utterances, None)
        ours = evaluate_voice(utterances, transform)
        figures = {"kind": "voice", "original": base.to_dict(), "anonymised": ours.to_dict()}
        if not args.json:
            print(f"{len(utterances)} utterances, {len({u.speaker for u in utterances})} speakers")
            print(f"{'':<22}{'EER ignorant':>14}{'EER semi-inf.':>15}{'accuracy':>10}{'RTF':>8}")
            for e in (base, ours):
                rtf = f"{e.real_time_factor:.0f}x" if e.real_time_factor else "-"
                print(f"{e.method:<22}{100 * e.eer_ignorant:>13.1f}%{100 * e.eer_semi_informed:>14.1f}%"
                      f"{100 * e.accuracy:>9.1f}%{rtf:>8}")
    else:
        if args.method not in (None, "face-redact"):
            raise ConfigError(f"unknown image method {args.method!r} (face-redact)")
        frames = [decode_image(f.read_bytes()) for f in _spread(_files(directory, _IMAGE), args.limit)]
        result = evaluate_images(frames, FaceRedactor())
        figures = {"kind": "image", **result.to_dict()}
        if not args.json:
            kept = "-" if result.people_recall_kept is None else f"{100 * result.people_recall_kept:.1f}%"
            print(f"{result.images} images, {result.faces_before} faces found by the independent detector")
            print(f"  faces still found after redaction  {100 * result.face_recall_after:.1f}%")
            if result.reid_top1_before is not None and result.reid_top1_after is not None:
                before, after = 100 * result.reid_top1_before, 100 * result.reid_top1_after
                print(f"  re-identified (top-1 of {result.reid_gallery})   before {before:.1f}%, after {after:.1f}%")
            print(f"  people still detected (bodies)     {kept} (of {result.people_before})")
            print(f"  redaction speed                    {result.frames_per_second:.1f} frames/s")
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0
