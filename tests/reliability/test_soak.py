"""The soak engine (``iotguard sim soak``): its declared warm-up, its figures, and one short real run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from iotguard.cli.main import build_parser
from iotguard.errors import ConfigError
from iotguard.sim.soak import (
    WARMUP_FRACTION,
    SoakSettings,
    memory_growth,
    percentile,
    reconcile_keys,
    warmup_seconds,
)
from tests.conftest import MOSQUITTO, PG_BIN


def test_warm_up_is_the_declared_first_fifth_whatever_the_samples_say() -> None:
    assert WARMUP_FRACTION == 0.2
    assert warmup_seconds(10) == 120.0
    # RSS grows for 4 minutes, then stays flat: with the declared warm-up (120 s) the growth counts
    # (a warm-up chosen afterwards at 240 s would report 0 %).
    samples = [(float(t), 100 + min(t, 240), 12) for t in range(0, 601, 5)]
    growth, at_warm = memory_growth(samples, warmup_seconds(10))
    assert at_warm == 220 and growth == pytest.approx((340 - 220) / 220, abs=1e-4)
    assert memory_growth(samples[:3], warmup_seconds(10)) == (None, 0)


def test_lost_duplicated_and_unexpected_are_counted_from_reading_ids() -> None:
    sent = [("d1", 1, 1), ("d1", 1, 2), ("d2", 1, 1)]
    stored = Counter({("d1", 1, 1): 2, ("d2", 1, 1): 1, ("d9", 1, 1): 1})
    assert reconcile_keys(sent, stored) == {"lost": 1, "duplicated": 1, "unexpected": 1}
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 3.0 and percentile([], 0.99) == 0.0


def test_soak_settings_refuse_nonsense() -> None:
    with pytest.raises(ConfigError):
        SoakSettings(devices=0)
    with pytest.raises(ConfigError):
        SoakSettings(minutes=0)


def test_sim_soak_is_a_cli_command_with_the_issues_options() -> None:
    args = build_parser().parse_args(["sim", "soak", "--devices", "10000", "--minutes", "10"])
    assert (args.devices, args.minutes, args.interval, args.connections) == (10000, 10.0, 10.0, 4)


@pytest.mark.slow
@pytest.mark.mosquitto
@pytest.mark.timeout(600)
def test_a_short_soak_on_mosquitto_and_postgresql_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    if not Path(MOSQUITTO).exists() or not (PG_BIN / "initdb").exists() or not shutil.which("runuser"):
        pytest.skip("needs mosquitto and PostgreSQL")
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "iotguard", "sim", "soak", "--devices", "40", "--minutes", "0.25",
                           "--interval", "1", "--connections", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=540, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("devices", "minutes", "memory_growth", "lost", "duplicated", "latency_ms", "samples"):
        assert key in report
    assert report["devices"] == 40 and report["lost"] == 0 and report["duplicated"] == 0
    assert report["unexpected"] == 0 and report["sent"] > 200 and report["stored"] == report["sent"]
    assert report["samples"] and all(s["rss_mb"] > 0 and s["fds"] > 0 for s in report["samples"])
