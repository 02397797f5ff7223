"""``iotguard media transform|evaluate`` as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from iotguard.cli.main import main
from iotguard.media import decode_wav, encode_wav
from iotguard.media.image import decode_image, independent_face_detector
from iotguard.sim.media import synthetic_corpus

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("voice")
    for i, u in enumerate(synthetic_corpus(speakers=3, per_digit=3, seed=4)):
        (d / f"{u.label}_{u.speaker}_{i}.wav").write_bytes(encode_wav(u.audio))
    return d


def test_transform_voice_directory_keeps_names(voice_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    assert main(["media", "transform", "voice", str(voice_dir), str(out)]) == 0
    names = sorted(p.name for p in voice_dir.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    src, dst = decode_wav((voice_dir / names[0]).read_bytes()), decode_wav((out / names[0]).read_bytes())
    assert len(src.samples) == len(dst.samples) and not np.allclose(src.samples, dst.samples, atol=1e-3)
    assert "pseudo-speaker" in capsys.readouterr().out  # the default is the strongest method


def test_transform_voice_file_with_mcadams(voice_dir: Path, tmp_path: Path) -> None:
    src = next(voice_dir.iterdir())
    assert main(["media", "transform", "voice", str(src), str(tmp_path / "x.wav"), "--method", "mcadams"]) == 0
    assert decode_wav((tmp_path / "x.wav").read_bytes()).rate == 8000


def test_malformed_input_is_rejected_with_a_reason(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.wav").write_bytes(b"RIFF\0\0\0\0WAVEjunk")
    assert main(["media", "transform", "voice", str(tmp_path / "in"), str(tmp_path / "out")]) == 1
    assert "rejected [malformed]" in capsys.readouterr().err


def test_evaluate_voice_json_last_line(voice_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["media", "evaluate", "voice", str(voice_dir), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["kind"] == "voice"
    for key in ("eer_ignorant", "eer_semi_informed", "accuracy", "real_time_factor"):
        assert key in figures["anonymised"]
    assert figures["anonymised"]["method"] == "pseudo-speaker"
    assert figures["original"]["eer_ignorant"] < figures["anonymised"]["eer_ignorant"]


def test_transform_and_evaluate_image(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in"
    shutil.copytree(DATA, src, ignore=shutil.ignore_patterns("*.md"))
    assert main(["media", "transform", "image", str(src), str(tmp_path / "out")]) == 0
    redacted = decode_image((tmp_path / "out" / "astronaut.jpg").read_bytes())
    assert independent_face_detector().detect(redacted) == []
    capsys.readouterr()
    assert main(["media", "evaluate", "image", str(src), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["faces_before"] == 1 and figures["face_recall_after"] == 0.0
    for key in ("face_recall_by_detector", "faces_by_detector", "reid_top1_before", "reid_top1_after",
                "people_recall_kept"):
        assert key in figures
