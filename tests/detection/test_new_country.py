"""The new-country rule (ADR 0717): countries from a MaxMind-format database, a device judged against the
countries its baseline reached."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from iotguard.detection import CountryDatabase, Flow, FlowBatch, FlowMonitor, HostStates, MonitorConfig
from iotguard.detection.features import FeatureExtractor
from iotguard.detection.geo import NewCountryRule
from iotguard.errors import ConfigError

T0 = 1_767_225_600.0
GB, SE, UNLISTED = "81.2.69.10", "89.160.20.5", "5.6.7.8"


def country_database(path: Path) -> Path:
    """A small country database in MaxMind's format (the records GeoLite2-Country and DB-IP lite carry)."""
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    writer.insert_network(IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "GB"}})
    writer.insert_network(IPSet(["89.160.20.0/24"]), {"country": {"iso_code": "SE"}})
    writer.insert_network(IPSet(["2a02:d0::/29"]), {"registered_country": {"iso_code": "DE"}})
    writer.insert_network(IPSet(["10.0.0.0/8"]), {"country": {"iso_code": "US"}})  # a bad database's claim
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> CountryDatabase:
    return CountryDatabase(country_database(tmp_path_factory.mktemp("geo") / "countries.mmdb"))


def _flows(src: str, peers: list[str], t0: float, step: float = 10.0) -> FlowBatch:
    return FlowBatch.from_flows([Flow(ts=t0 + step * i, orig_h=src, orig_p=40000 + i % 20000, resp_h=peer,
                                      resp_p=443, proto="tcp", duration=0.3, orig_bytes=400, resp_bytes=1200,
                                      conn_state="SF", orig_pkts=5, resp_pkts=5) for i, peer in enumerate(peers)])


def test_countries_of_addresses(database: CountryDatabase) -> None:
    assert database.database_type == "GeoLite2-Country"
    assert [database.country(a) for a in (GB, SE, "2a02:d0::1", UNLISTED, "10.1.2.3", "not-an-address")] == \
        ["GB", "SE", "DE", "", "", ""]  # a private address has no country whatever the file says


def test_a_file_that_is_not_a_country_database_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "countries.mmdb"
    bad.write_bytes(b"\x00" * 4096)
    for path in (bad, tmp_path / "missing.mmdb"):
        with pytest.raises(ConfigError) as err:
            CountryDatabase(path)
        assert err.value.code == "geo_database_invalid"


def test_a_device_reaching_a_country_outside_its_baseline_is_flagged(database: CountryDatabase) -> None:
    rule = NewCountryRule(database, devices={"10.20.0.5": "cam-1"})
    learned = _flows("10.20.0.5", [GB] * 25 + ["10.0.0.1"] * 5, T0)
    rule.learn(learned, FeatureExtractor().transform(learned))
    later = _flows("10.20.0.5", [GB, SE, "10.0.0.1", UNLISTED, SE], T0 + 1000.0)
    assert rule.hits(later, FeatureExtractor().transform(later)).tolist() == [False, True, False, False, True]
    [alert] = rule.evaluate(later, FeatureExtractor().transform(later))
    assert (alert.device, alert.detector, dict(alert.evidence)["countries"], dict(alert.evidence)["flows"]) == (
        "cam-1", "new_country", "SE", 2)
    unjudged = _flows("10.20.0.6", [SE], T0 + 1000.0)  # no baseline of its own yet: not judged
    assert not rule.hits(unjudged, FeatureExtractor().transform(unjudged)).any()


def test_the_country_baseline_lives_in_the_shared_host_state(database: CountryDatabase) -> None:
    """A batch judged by a monitor holding exactly the stored state (as each hub process does) knows the
    countries another batch taught; a monitor without the database carries them through unchanged."""
    device = "10.20.0.5"
    config = MonitorConfig(learn_flows=16, learn_s=0.0)

    def apply(monitor: FlowMonitor, batch: FlowBatch, stored: dict[str, bytes]) -> tuple[dict[str, bytes], list]:
        monitor.detector.reset_hosts()
        hosts = HostStates(monitor.detector, batch, stored)
        alerts = monitor.observe(batch)
        return hosts.export(), alerts

    stored: dict[str, bytes] = {}
    monitor = FlowMonitor(config, devices={device: "cam-1"}, countries=database)
    out, _ = apply(monitor, _flows(device, [GB] * 40, T0), {})
    stored.update(out)
    assert not monitor.learning
    plain = FlowMonitor(config, devices={device: "cam-1"})  # another process, no database: carries them
    plain.detector.adopt(monitor.detector.scorer)
    out, _ = apply(plain, _flows(device, [GB], T0 + 500.0), {device: stored[device]})
    stored.update(out)
    fresh = FlowMonitor(config, devices={device: "cam-1"}, countries=database)
    fresh.detector.adopt(monitor.detector.scorer)
    _, alerts = apply(fresh, _flows(device, [GB, SE], T0 + 1000.0), {device: stored[device]})
    assert [(a.device, dict(a.evidence)["countries"]) for a in alerts if a.detector == "new_country"] == [
        ("cam-1", "SE")]
