"""Enrollment, proof of possession, certificates and re-keying."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import update

from iotguard.agent import Agent
from iotguard.config import AgentConfig
from iotguard.errors import EnrollmentError, MalformedError
from iotguard.hub.ingest import Incoming
from iotguard.hub.schema import enrollment_tokens
from iotguard.identity import parse_enrollment_code
from iotguard.wire import Reading, encode_reading
from tests.hub.conftest import HubParts


def test_enrollment_issues_a_certificate_from_the_fleet_ca(hub: HubParts) -> None:
    agent = hub.agent("dev-1")
    assert agent.enrolled and agent.sealer.epoch == 1
    d = hub.store.get_device("dev-1")
    assert d.status == "active"
    cert = x509.load_pem_x509_certificate(d.cert_pem.encode())
    hub.registry.ca.verify_device_certificate(cert, now=datetime.now(UTC))
    assert cert.subject.rfc4514_string().endswith("CN=dev-1")
    assert cert.public_key().public_bytes_raw() == agent.keystore.public_key("identity")


def test_enrollment_code_is_one_time(hub: HubParts) -> None:
    """A leaked, already-used enrollment code cannot enroll a second (cloned) device."""
    code = str(hub.registry.add_device("dev-1", "thermo-1"))
    hub.agent("dev-1", enroll=False).enroll(code)
    # A second device (fresh keys, own state directory) presenting the same code.
    clone = Agent(AgentConfig(data_dir=str(hub.tmp / "clone"), hub_url="http://testserver",
                              suites=["chacha20-poly1305"]), "dev-1", http=hub.client)
    with pytest.raises(EnrollmentError):
        clone.enroll(code)


def test_expired_enrollment_code_is_refused(hub: HubParts) -> None:
    code = str(hub.registry.add_device("dev-1", "thermo-1"))
    with hub.store.engine.begin() as c:
        c.execute(update(enrollment_tokens).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with pytest.raises(EnrollmentError):
        hub.agent("dev-1", enroll=False).enroll(code)


def test_default_credential_guessing_fails(hub: HubParts) -> None:
    """No default or guessable enrollment secret exists: a guessed token is refused."""
    real = parse_enrollment_code(str(hub.registry.add_device("dev-1", "thermo-1")))
    for guess in (b"\x00" * 32, b"admin".ljust(32, b"\x00"), bytes(range(32))):
        secret = __import__("base64").urlsafe_b64encode(guess).rstrip(b"=").decode()
        forged = f"iotguard-enroll:v1:dev-1:{secret}:{real.ca_fingerprint}"
        with pytest.raises(EnrollmentError):
            hub.agent("dev-1", enroll=False).enroll(forged)


def test_proof_of_possession_is_required(hub: HubParts) -> None:
    """A request signed by a key other than the one presented is refused."""
    from iotguard.identity import b64e

    code = parse_enrollment_code(str(hub.registry.add_device("dev-1", "thermo-1")))
    body = {"device_id": "dev-1", "token": b64e(code.secret), "identity_public_key": b64e(b"\x01" * 32),
            "kex_public_key": b64e(b"\x02" * 32), "transport_public_key": b64e(b"\x03" * 32),
            "suites": ["chacha20-poly1305"], "signature": b64e(b"\x00" * 64)}
    r = hub.client.post("/v1/enroll", json=body)
    assert r.status_code == 403 and r.json()["error"] == "enrollment_failed"
    # the token was not consumed by the failed attempt
    hub.agent("dev-1", enroll=False).enroll(str(code))


def test_device_refuses_a_hub_with_another_ca(hub: HubParts, tmp_path) -> None:
    """The enrollment code pins the fleet CA: an impostor hub is detected."""
    code = parse_enrollment_code(str(hub.registry.add_device("dev-1", "thermo-1")))
    bad = f"iotguard-enroll:v1:dev-1:{str(code).split(':')[3]}:{'0' * 64}"
    with pytest.raises(EnrollmentError, match="CA"):
        hub.agent("dev-1", enroll=False).enroll(bad)


def test_enrollment_code_for_another_device(hub: HubParts) -> None:
    code = str(hub.registry.add_device("dev-1", "thermo-1"))
    with pytest.raises(MalformedError):
        hub.agent("dev-2", enroll=False).enroll(code)


def test_suite_negotiation_and_rekey_to_another_suite(hub: HubParts) -> None:
    agent = hub.agent("dev-1", suites=["aes-128-gcm", "chacha20-poly1305"])
    assert agent.sealer.suite.name == "aes-128-gcm"
    agent.rekey(["chacha20-poly1305"])
    assert agent.sealer.epoch == 2 and agent.sealer.suite.name == "chacha20-poly1305"
    assert hub.store.get_device("dev-1").current_epoch == 2
    # the session survives an agent restart
    again = type(agent)(agent.cfg, "dev-1", http=hub.client)
    assert again.sealer.epoch == 2


def test_no_common_suite_is_refused(tmp_path) -> None:
    from tests.hub.conftest import make_hub

    parts = make_hub(tmp_path, allowed_suites=["aes-256-gcm"])
    with pytest.raises(EnrollmentError):
        parts.agent("dev-1", suites=["chacha20-poly1305"])


def test_session_keys_are_never_stored_in_clear(hub: HubParts) -> None:
    from sqlalchemy import select

    from iotguard.hub.schema import key_epochs

    agent = hub.agent("dev-1")
    with hub.store.engine.connect() as c:
        wrapped = c.execute(select(key_epochs.c.wrapped_key)).scalar_one()
    assert agent._keys is not None and agent._keys.uplink not in wrapped


def test_usage_limit_triggers_rekey_before_it_is_reached(hub: HubParts, monkeypatch) -> None:
    """Crypto agility: a key is never used past its suite's message limit; the device re-keys first."""
    from iotguard.crypto import get_suite
    from iotguard.hub.ingest import Incoming
    from iotguard.wire import Reading

    suite = get_suite("chacha20-poly1305")
    monkeypatch.setattr(suite, "max_messages", 20)
    agent = hub.agent("dev-1")
    for i in range(30):
        agent.submit(Reading(1_700_000_000_000 + i, {"temperature": 20.0}, "heating_control"))
        hub.processor.process([Incoming(agent.sealer.topic, agent.last_envelope)])
    assert agent.sealer.epoch == 2  # re-keyed once, at 90% of the limit
    assert hub.store.get_device("dev-1").current_epoch == 2
    assert hub.store.reading_count("dev-1") == 30  # both epochs' readings were accepted


@pytest.mark.parametrize("model", ["../../etc/passwd", "/etc/passwd", "..", "thermo-1\x00", "Thermo 1", ""])
def test_device_model_that_is_not_a_contract_name_is_refused(hub: HubParts, model: str) -> None:
    """The model later selects a data contract by name; a path never gets stored (issue 10)."""
    with pytest.raises(MalformedError, match="model"):
        hub.registry.add_device("dev-1", model)


def test_agent_with_puf_sim_from_config_enrolls_signs_and_reopens(
        hub: HubParts, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``agent.keystore_backend = "puf-sim"`` in the config file is all it takes (issue 10)."""
    from iotguard.config import load_config
    from iotguard.keys.puf import PufKeyStore

    data_dir = tmp_path / "puf-agent"
    conf = tmp_path / "iotguard.toml"
    # The in-process test client speaks http://testserver, so plain HTTP is acknowledged as unsafe here.
    conf.write_text(f'[agent]\ndata_dir = "{data_dir}"\nhub_url = "http://testserver"\n'
                    'unsafe_plain_http = true\n'
                    'suites = ["chacha20-poly1305"]\nkeystore_backend = "puf-sim"\n')
    cfg = load_config(conf, env={}).agent
    agent = Agent(cfg, "dev-puf", http=hub.client)
    assert isinstance(agent.keystore, PufKeyStore)
    assert agent.keystore.enrollment is not None and agent.keystore.enrollment.key_entropy_bits >= 128
    assert "UNSAFE" in caplog.text and "puf-sim" in caplog.text
    agent.enroll(str(hub.registry.add_device("dev-puf", "thermo-1")))
    assert hub.store.get_device("dev-puf").status == "active"
    keys = sorted(p.name for p in (data_dir / "keys").iterdir())
    assert keys == ["puf-sim-silicon.cbor", "puf-store.cbor"]  # seed of the simulated chip + helper data
    agent.renew_certificate()  # a request signed with the PUF-derived identity key, verified by the hub
    _seq, env = agent.sealer.seal(encode_reading(Reading(1_700_000_000_000, {"temperature": 21.0},
                                                         "heating_control")))
    assert hub.processor.process([Incoming(agent.sealer.topic, env)]).stored == 1

    again = Agent(cfg, "dev-puf", http=hub.client)  # a restart: same silicon, same keys
    assert again.keystore.public_key("identity") == agent.keystore.public_key("identity")
    again.renew_certificate()
