"""Enrollment requiring a party-signed chain of custody; ``iotguard custody`` and ``devices provenance``."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from iotguard.audit import EventType
from iotguard.audit.events import AuditEvent
from iotguard.cli.main import build_parser
from iotguard.errors import EnrollmentError
from iotguard.hub.custody_gate import CustodyGate, load_custody_parties
from iotguard.keys.keystore import KeyKind
from tests.hub.conftest import HubParts

ROUTE = [
    ("acme-factory", "manufacturer"),
    ("euro-distrib", "distributor"),
    ("sparky-install", "installer"),
    ("city-operator", "operator"),
]


def cli(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return int(args.func(args))


def setup_parties(tmp: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    entries = []
    for name, role in [*ROUTE, ("shady-reseller", "installer")]:
        assert cli("custody", "keygen", "--keys", str(tmp / "orgs" / name), "--party", name, "--role", role) == 0
        entries.append(json.loads(capsys.readouterr().out))
    parties = tmp / "parties.json"
    parties.write_text(json.dumps(entries))
    return parties


def sign_route(tmp: Path, device: str, device_key: bytes, route: list[tuple[str, str]],
               signer: dict[str, str] | None = None, tag: str = "") -> list[Path]:
    files: list[Path] = []
    for i, (name, role) in enumerate(route):
        out = tmp / f"{device}-{tag}{i}.cose"
        argv = ["custody", "sign", "--keys", str(tmp / "orgs" / (signer or {}).get(name, name)), "--party", name,
                "--role", role, "--device", device, "--device-key", base64.b64encode(device_key).decode(),
                "-o", str(out)]
        if i + 1 < len(route):
            argv += ["--next", route[i + 1][0]]
        if files:
            argv += ["--previous", str(files[-1])]
        assert cli(*argv) == 0
        files.append(out)
    return files


def test_enrollment_requires_a_complete_signed_custody_chain(
    hub: HubParts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parties = setup_parties(tmp_path, capsys)
    hub.registry.custody = CustodyGate(hub.services.audit.log, load_custody_parties(parties))
    config = tmp_path / "iotguard.toml"
    config.write_text(f'[hub]\ndata_dir = "{hub.cfg.data_dir}"\ncustody_parties_file = "{parties}"\n')

    # A device whose key was born at the factory, handed on by every party in turn.
    good = hub.agent("dev-1", enroll=False)
    good_key = good.keystore.generate("identity", KeyKind.ED25519)
    statements = sign_route(tmp_path, "dev-1", good_key, ROUTE)
    assert cli("custody", "record", "--config", str(config), *map(str, statements)) == 0
    good.enroll(str(hub.registry.add_device("dev-1", "thermo-1")))
    assert hub.store.get_device("dev-1").status == "active"

    capsys.readouterr()
    assert cli("devices", "--config", str(config), "provenance", "dev-1", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["role"] for c in report["custody"]] == [r for _, r in ROUTE] and report["verified"]


def test_diverted_device_is_refused_at_enrollment(
    hub: HubParts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check for a diverted device: it leaves the distributor for one installer and turns up via another."""
    parties = setup_parties(tmp_path, capsys)
    hub.registry.custody = CustodyGate(hub.services.audit.log, load_custody_parties(parties))
    config = tmp_path / "iotguard.toml"
    config.write_text(f'[hub]\ndata_dir = "{hub.cfg.data_dir}"\n')

    diverted = hub.agent("dev-2", enroll=False)
    key = diverted.keystore.generate("identity", KeyKind.ED25519)
    genuine = sign_route(tmp_path, "dev-2", key, ROUTE)
    # The reseller signs the installer's hand-over in its own name; the distributor had named sparky-install.
    detour = sign_route(tmp_path, "dev-2", key, [ROUTE[0], ROUTE[1], ("shady-reseller", "installer"), ROUTE[3]],
                        tag="detour")
    assert cli("custody", "record", "--config", str(config), "--parties", str(parties),
               *map(str, [*genuine[:2], *detour[2:]])) == 0
    code = str(hub.registry.add_device("dev-2", "thermo-1"))
    with pytest.raises(EnrollmentError):
        diverted.enroll(code)
    assert hub.store.get_device("dev-2").status != "active"
    failures = [AuditEvent.from_cbor(e) for i in hub.services.audit.log.find_subject("dev-2")
                for e in hub.services.audit.log.entries(i, i + 1)]
    assert any(e.type == EventType.AUTH_FAILED and e.details.get("reason") == "custody_diverted" for e in failures)


def test_device_that_skipped_a_party_or_has_a_forged_statement_is_refused(
    hub: HubParts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check for a skipped party and for a statement signed with the wrong key."""
    parties = setup_parties(tmp_path, capsys)
    gate = CustodyGate(hub.services.audit.log, load_custody_parties(parties))
    hub.registry.custody = gate

    skipper = hub.agent("dev-3", enroll=False)
    key3 = skipper.keystore.generate("identity", KeyKind.ED25519)
    for f in sign_route(tmp_path, "dev-3", key3, [ROUTE[0], ROUTE[2], ROUTE[3]]):
        gate.record(f.read_bytes())
    with pytest.raises(EnrollmentError):
        skipper.enroll(str(hub.registry.add_device("dev-3", "thermo-1")))

    forger = hub.agent("dev-4", enroll=False)
    key4 = forger.keystore.generate("identity", KeyKind.ED25519)
    forged = sign_route(tmp_path, "dev-4", key4, ROUTE, signer={"sparky-install": "shady-reseller"})
    for f in forged[:2]:
        gate.record(f.read_bytes())
    with pytest.raises(EnrollmentError):  # the hub does not even log a statement that fails its signature
        gate.record(forged[2].read_bytes())
    with pytest.raises(EnrollmentError):
        forger.enroll(str(hub.registry.add_device("dev-4", "thermo-1")))
    # No chain at all: refused too.
    bare = hub.agent("dev-5", enroll=False)
    with pytest.raises(EnrollmentError):
        bare.enroll(str(hub.registry.add_device("dev-5", "thermo-1")))
