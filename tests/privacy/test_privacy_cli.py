"""``iotguard privacy`` and ``iotguard export`` as a user runs them."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest

from iotguard.cli.main import main
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.privacy_store import PrivacyStore
from iotguard.hub.schema import devices, readings


def test_notice_is_plain_language(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["privacy", "notice", "wear-1"]) == 0
    out = capsys.readouterr().out
    assert "What your wear-1 fitness wearable shares" in out
    assert "Kept for 1 week" in out and "withdraw" in out and "epsilon" in out
    assert main(["privacy", "notice", "toaster-9"]) == 1


def test_consent_grant_withdraw_ls(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the hub's key store (./iotguard-data/keys) seals subject data
    db = ["--database-url", f"sqlite:///{tmp_path / 'hub.db'}"]
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    with engine.begin() as c:
        c.execute(
            devices.insert().values(
                device_id="t1",
                model="thermo-1",
                segment="home",
                status="active",
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
        )
    assert main(["privacy", "link", "--subject", "alice", "--device", "t1", *db]) == 0
    assert main(["privacy", "consent", "grant", "--subject", "alice", "--purpose", "research", *db]) == 0
    assert main(["privacy", "consent", "grant", "--subject", "alice", "--purpose", "marketing", *db]) == 1
    assert main(["privacy", "consent", "withdraw", "--subject", "alice", "--purpose", "research", *db]) == 0
    capsys.readouterr()
    assert main(["privacy", "consent", "ls", "--subject", "alice", "--json", *db]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 2 and doc["purposes"]["research"]["granted"] is False
    out = tmp_path / "alice.json"
    assert main(["privacy", "access", "--subject", "alice", "--out", str(out), *db]) == 0
    assert b"alice" not in out.read_bytes()  # sealed under alice's data key
    capsys.readouterr()
    assert main(["privacy", "open-export", str(out), "--subject", "alice", *db]) == 0
    assert json.loads(capsys.readouterr().out)["subject"] == "alice"
    assert main(["privacy", "erase", "--subject", "alice", *db]) == 1  # needs --yes
    assert main(["privacy", "erase", "--subject", "alice", "--yes", *db]) == 0
    assert main(["privacy", "open-export", str(out), "--subject", "alice", *db]) == 1  # shredded


def test_export_from_records_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(2)
    rows = [
        {
            "name": f"n{i}",
            "age": rng.randint(20, 80),
            "zip": rng.choice(["a", "b", "c"]),
            "diag": rng.choice(["x", "y", "z"]),
        }
        for i in range(300)
    ]
    src = tmp_path / "people.json"
    src.write_text(json.dumps(rows))
    out, rep = tmp_path / "extract.csv", tmp_path / "risk.json"
    assert (
        main(
            [
                "export",
                "--k",
                "10",
                "--records",
                str(src),
                "--qi",
                "age,zip",
                "--subject",
                "name",
                "--sensitive",
                "diag",
                "--l",
                "2",
                "--out",
                str(out),
                "--report",
                str(rep),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert text.startswith("age,zip,diag") and "n1" not in text
    risk = json.loads(rep.read_text())
    assert risk["smallest_class"] >= 10 and risk["max_risk"] <= 0.1 and risk["l_diversity"] >= 2
    assert "max risk" in capsys.readouterr().err


def test_export_from_hub_database(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(url)
    migrate(engine)
    subjects = PrivacyStore(engine)
    rng = random.Random(3)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as c:
        for d in range(40):
            c.execute(
                devices.insert().values(
                    device_id=f"w{d}", model="wear-1", segment="home", status="active", created_at=t0
                )
            )
    for d in range(40):  # w40 below never consented: its readings stay out of the extract
        subjects.link_device(f"s{d}", f"w{d}", t0)
        subjects.set_consent(f"s{d}", "safety", True, t0, actor="test")
    with engine.begin() as c:
        c.execute(devices.insert().values(device_id="w40", model="wear-1", segment="home", status="active",
                                          created_at=t0))
        for d in range(41):
            for s in range(3):
                body = {
                    "ts": 0,
                    "p": "safety",
                    "f": {
                        "heart_rate": rng.randint(50, 120),
                        "location": f"{52 + rng.random():.3f},{13 + rng.random():.3f}",
                    },
                }
                c.execute(
                    readings.insert().values(
                        device_id=f"w{d}",
                        epoch=1,
                        seq=s,
                        topic="t",
                        received_at=t0.replace(hour=s),
                        body=cbor2.dumps(body),
                    )
                )
    assert (
        main(
            [
                "export",
                "--k",
                "10",
                "--database-url",
                url,
                "--purpose",
                "safety",
                "--qi",
                "location_lat,location_lon,hour",
                "--sensitive",
                "heart_rate",
                "--format",
                "json",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["k"] == 10 and len(doc["records"]) == 120
    assert all("device_id" not in r for r in doc["records"])
    assert "smallest class (k)" in captured.err


def test_export_counts_people_and_drops_direct_identifiers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14: without --qi, device_id and owner became quasi-identifiers and were published."""
    rng = random.Random(5)
    people = [(f"dev-{d:03d}", f"owner-{d:03d}", rng.randint(20, 80), rng.choice("abc")) for d in range(30)]
    rows = [{"device_id": d, "owner": o, "age": a, "zip": z, "steps": rng.randint(0, 9)}
            for _ in range(8) for d, o, a, z in people]
    src = tmp_path / "fleet.json"
    src.write_text(json.dumps(rows))
    rep = tmp_path / "risk.json"
    assert main(["export", "--k", "5", "--records", str(src), "--keep", "steps", "--report", str(rep)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("age,zip,steps")
    assert "dev-" not in captured.out and "owner-" not in captured.out
    assert "direct identifiers dropped: device_id, owner" in captured.err
    risk = json.loads(rep.read_text())
    assert risk["subjects"] == 30 and risk["records"] == 240 and risk["smallest_class"] >= 5


def test_export_without_a_subject_column_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "rows.json"
    src.write_text(json.dumps([{"age": i % 50, "zip": "a", "v": 1} for i in range(100)]))
    assert main(["export", "--k", "5", "--records", str(src), "--qi", "age"]) == 1
    assert "--subject" in capsys.readouterr().err
