"""``hub.detection_country_database`` (ADR 0717): a sensor's flows show a device reaching a new country."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotguard.errors import ConfigError
from iotguard.hub.services.sensing import ADDRESS_INVENTORY_FILE, SENSOR_MODEL
from iotguard.sim import traffic
from tests.detection.test_new_country import GB, SE, _flows, country_database
from tests.hub.conftest import make_hub
from tests.hub.test_sensing import _report

T0 = 1_767_225_600.0


def test_a_device_reaching_a_new_country_is_alerted_through_the_sensor_path(tmp_path: Path) -> None:
    db = country_database(tmp_path / "countries.mmdb")
    hub = make_hub(tmp_path, detection_country_database=str(db), detection_learn_flows=16, detection_learn_s=0.0)
    try:
        sims = traffic.make_fleet(per_model=1, segments=1)[:2]
        for d in sims:
            hub.agent(d.device_id, model=d.model)
        (Path(hub.cfg.data_dir) / ADDRESS_INVENTORY_FILE).write_text(
            "".join(f"{d.address} {d.device_id}\n" for d in sims))
        sensor = hub.agent("sensor-1", model=SENSOR_MODEL)
        _report(sensor, _flows(sims[0].address, [GB] * 40, T0))
        assert not hub.services.flows._current().learning
        _report(sensor, _flows(sims[0].address, [GB, GB], T0 + 1000.0))
        assert not any(a.alert.detector == "new_country" for a in hub.services.detection.alerts())
        _report(sensor, _flows(sims[0].address, [SE], T0 + 1100.0))
        found = [(a.alert.device, dict(a.alert.evidence)["countries"]) for a in hub.services.detection.alerts()
                 if a.alert.detector == "new_country"]
        assert found == [(sims[0].device_id, "SE")]
    finally:
        hub.store.engine.dispose()


def test_a_country_database_that_does_not_open_stops_the_hub(tmp_path: Path) -> None:
    bad = tmp_path / "countries.mmdb"
    bad.write_bytes(b"not a database")
    with pytest.raises(ConfigError) as err:
        make_hub(tmp_path, detection_country_database=str(bad))
    assert err.value.code == "geo_database_invalid"
