"""``iotguard detect eval|flows`` and ``iotguard playbooks validate`` on files made in the test."""

from __future__ import annotations

import json

import pytest

from iotguard.cli.main import main
from iotguard.detection.zeek import format_conn_log
from iotguard.sim import traffic


@pytest.fixture(scope="module")
def labeled_log(tmp_path_factory) -> str:
    fleet = traffic.make_fleet(per_model=2, segments=1)
    t0 = 1_700_000_000.0
    benign = traffic.benign_traffic(fleet, t0, 3 * 3600, seed=31)
    attacks = traffic.mirai_scan(fleet[0], t0 + 2.5 * 3600, 20, rate=10).merged(
        traffic.syn_flood(fleet[1], "10.0.0.1", t0 + 2.7 * 3600, 5, rate=50))
    everything = benign.merged(attacks)
    path = tmp_path_factory.mktemp("zeek") / "conn.log.labeled"
    path.write_bytes(format_conn_log(everything.flows, ["Malicious" if m else "Benign" for m in everything.malicious]))
    return str(path)


def test_eval_prints_one_json_object_last(labeled_log: str, capsys) -> None:
    assert main(["detect", "eval", "--zeek", labeled_log, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "ROC AUC" in "\n".join(out[:-1])
    report = json.loads(out[-1])
    assert {"auc", "tpr_at_1pct_fpr", "flows_per_s", "flows", "precision", "delay_median_s"} <= set(report)
    assert report["auc"] > 0.95 and report["flows"] > 1000 and report["flows_per_s"] > 0
    assert report["attackers_detected"] == 2


def test_eval_grades_the_known_bad_rule_with_a_feed(tmp_path, capsys) -> None:
    """With --feed listing a C&C server, the flows to it are flagged (critical: they rank first), no other is."""
    fleet = traffic.make_fleet(per_model=2, segments=1)
    t0 = 1_700_000_000.0
    everything = traffic.benign_traffic(fleet, t0, 3 * 3600, seed=31).merged(
        traffic.cnc_beacon(fleet[2], t0 + 2.5 * 3600, 600.0, server="203.0.113.66", port=443, period_s=90.0))
    log = tmp_path / "conn.log.labeled"
    log.write_bytes(format_conn_log(everything.flows, ["Malicious" if m else "Benign" for m in everything.malicious]))
    c2 = sum(1 for f in everything.flows if f.resp_h == "203.0.113.66")

    def report(*extra: str) -> dict[str, float]:
        assert main(["detect", "eval", "--zeek", str(log), "--json", *extra]) == 0
        out: dict[str, float] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        return out

    without = report()
    feed = tmp_path / "feed.txt"
    feed.write_text("# C&C\n203.0.113.64/30\n")
    with_feed = report("--feed", str(feed))
    # Every flow to the listed server is flagged, no other is added, and they rank first (critical).
    assert with_feed["rule_flagged_malicious"] == c2
    assert with_feed["rule_flagged"] - without["rule_flagged"] == \
        with_feed["rule_flagged_malicious"] - without["rule_flagged_malicious"]
    assert with_feed["auc"] == 1.0 > without["auc"]
    feed.write_text("203.0.113.64/30\n10.0.0.999\n")
    assert main(["detect", "eval", "--zeek", str(log), "--feed", str(feed)]) == 1
    assert "feed_bad_entry" in capsys.readouterr().err


def test_eval_rejects_a_log_without_labels(tmp_path, capsys) -> None:
    path = tmp_path / "conn.log"
    path.write_bytes(format_conn_log(traffic.benign_traffic(traffic.make_fleet(1, 1), 0.0, 600).flows))
    assert main(["detect", "eval", "--zeek", str(path)]) == 1
    assert "zeek_no_label_column" in capsys.readouterr().err


def test_flows_from_zeek(labeled_log: str, capsys) -> None:
    assert main(["detect", "flows", "--zeek", labeled_log]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["proto"] in ("tcp", "udp") and first["orig_h"].startswith("10.20.")


def test_playbooks_validate(tmp_path, capsys) -> None:
    good = tmp_path / "pb.toml"
    good.write_text('format = "iotguard-playbook/1"\nname = "p"\nrevision = 2\n'
                    '[[rules]]\nname = "r"\ndetectors = ["scan_fanout"]\nactions = ["quarantine"]\n')
    assert main(["playbooks", "validate", str(good)]) == 0
    assert "playbook p revision 2: valid" in capsys.readouterr().out
    assert main(["playbooks", "validate", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rules"][0]["actions"] == ["quarantine"]
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('"quarantine"', '"wipe"'))
    assert main(["playbooks", "validate", str(bad)]) == 1
    assert "playbook_invalid" in capsys.readouterr().err


def test_flows_from_pcap(tmp_path, capsys) -> None:
    from .test_pcap import DEV, OTHER, S, _capture, _tcp

    path = tmp_path / "scan.pcap"
    path.write_bytes(_capture([(float(i), _tcp(DEV, 40000 + i, OTHER, 23, S)) for i in range(3)]))
    assert main(["detect", "flows", "--pcap", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(f["resp_p"], f["conn_state"]) for f in lines] == [(23, "S0")] * 3
