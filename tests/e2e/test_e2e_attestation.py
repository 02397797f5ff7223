"""Remote attestation end to end with real processes, on the software root of trust and on a TPM (swtpm).

``iotguard hub`` on Mosquitto (ACL written by the hub), two ``iotguard agent``
processes that boot a signed image set (measured boot) and attest at start:
one genuine (affirming -> trust tier ``verified``), one whose secure boot is
bypassed and whose kernel or privacy configuration carries an implant
(contraindicated -> ``failed``: nothing it sends is stored, its telemetry
grant leaves the broker ACL). Quarantined, it is released only once a
restart on genuine images gives fresh affirming evidence. On the TPM the EK
of each device's TPM is recorded at enrollment and the agent certifies its
AK against it by itself.

The operator's commands run in this process (``iotguard.cli.main.main`` on the
hub's configuration) rather than as new interpreters, and the test waits on
the hub's answers (appraisal history, stored readings), never on sleeps: a
``motion-1`` sensor may send a reading every second, so nothing waits for a
slower model's minimum interval.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.agent.images import build_image_set
from iotguard.cli.main import main
from iotguard.sim.attestation import DEMO_APPRAISAL_POLICY
from tests.attestation.conftest import EkCa, make_ek_ca
from tests.conftest import MosquittoTls
from tests.e2e.harness import HubProcess

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto]

MODEL = "motion-1"  # its "safety" purpose admits a reading a second (contract basis, no consent)


class AgentProcess:
    """``python -m iotguard agent`` for one device, configured through the environment."""

    def __init__(self, hub: HubProcess, tmp: Path, device_id: str, env: dict[str, str]) -> None:
        self.hub, self.device_id, self.tmp = hub, device_id, tmp
        self.data_dir = tmp / "agents" / device_id
        self.env = {**os.environ, "IOTGUARD_CONFIG": str(tmp / "no-config.toml"), **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, code: str | None = None) -> None:
        self.starts += 1
        self.log = self.tmp / f"agent-{self.device_id}-{self.starts}.log"
        args = [sys.executable, "-m", "iotguard", "agent", "--device-id", self.device_id,
                "--data-dir", str(self.data_dir), "--hub-url", self.hub.api_url,
                "--broker-url", self.hub.broker_url, "--interval", "0.5", "--model", MODEL]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([*args, *(["--enroll", code] if code else [])], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _wait_for(check: Callable[[], bool], timeout: float, what: str, *logs: AgentProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    detail = "\n".join(f"--- {a.device_id}\n{a.output()[-3000:]}" for a in logs)
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


class OperatorCli:
    """The operator's ``iotguard`` commands on the hub's host, run in this process on the hub's configuration."""

    def __init__(self, hub: HubProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        for name, value in hub.env.items():
            if name.startswith("IOTGUARD_"):
                monkeypatch.setenv(name, value)
        self.capsys = capsys

    def __call__(self, *args: str) -> str:
        self.capsys.readouterr()
        assert main(list(args)) == 0, self.capsys.readouterr()
        return self.capsys.readouterr().out

    def posture(self) -> dict[str, dict[str, Any]]:
        return {r["device_id"]: r for r in json.loads(self("devices", "posture", "--json"))}


def _appraisals(admin: httpx.Client, device_id: str) -> list[str]:
    """The device's appraisal statuses, newest first (the posture is set before an appraisal is visible)."""
    r = admin.get(f"/v1/devices/{device_id}/attestations")
    r.raise_for_status()
    return [a["status"] for a in r.json()]


def _readings(hub: HubProcess, token: str, device_id: str) -> int:
    """How many of the device's readings the hub stored (a count: raw reads are purpose-bound)."""
    r = httpx.get(f"{hub.api_url}/v1/devices/{device_id}",
                  headers={"Authorization": f"Bearer {token}"}, verify=hub.verify(), timeout=10)
    r.raise_for_status()
    return int(r.json()["readings"])


def _acl(broker: MosquittoTls) -> str:
    return "\n".join(p.read_text() for p in broker.conf_dir.iterdir() if "acl" in p.name and p.is_file())


@pytest.fixture(params=["software", pytest.param("tpm2", marks=pytest.mark.swtpm)])
def tpms(request: pytest.FixtureRequest) -> list[Any]:
    """Per device, its TPM (two independent swtpm), or nothing on the software root."""
    if request.param == "software":
        return [None, None]
    return [request.getfixturevalue("swtpm"), request.getfixturevalue("other_swtpm")]


@pytest.fixture
def hub_on_mosquitto(tmp_path: Path, mosquitto_tls: object,
                     tpms: list[Any]) -> Iterator[tuple[HubProcess, MosquittoTls]]:
    hub = HubProcess(tmp_path)
    if tpms[0] is not None:  # the hub trusts the TPM manufacturer (swtpm's local CA) for EK certificates
        hub.env["IOTGUARD_HUB__TPM_EK_ROOTS"] = str(make_ek_ca(tmp_path / "ek-ca").roots_file)
    broker = hub.use_mosquitto(mosquitto_tls)  # type: ignore[arg-type]
    hub.start()
    yield hub, broker
    hub.stop()


def test_e2e_attestation_verifies_cuts_off_a_tampered_device_and_releases_it_on_fresh_evidence(
        hub_on_mosquitto: tuple[HubProcess, MosquittoTls], tpms: list[Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    hub, broker = hub_on_mosquitto
    cli = OperatorCli(hub, monkeypatch, capsys)
    firmware_key = Ed25519PrivateKey.generate()
    release = tmp_path / "release-1.0.0"
    build_image_set(release, firmware_key.sign, "1.0.0")
    stage = "kernel" if tpms[0] is None else "privacy-configuration"
    tampered = shutil.copytree(release, tmp_path / "tampered")
    image = tampered / f"{stage}.img"
    image.write_bytes(image.read_bytes() + b"\x00implant")

    # The operator, on the hub host: reference values from the signed release, the model's appraisal policy.
    cli("reference-values", "add", MODEL, "1.0.0", "--images", str(release))
    policy = tmp_path / "policy.toml"
    policy.write_text(DEMO_APPRAISAL_POLICY.format(model=MODEL))
    cli("attestation-policy", "set", MODEL, str(policy))
    token = cli("tokens", "create", "--name", "e2e", "--role", "security-admin").strip().splitlines()[-1]
    provision = hub.provisioner(token)
    admin = httpx.Client(base_url=hub.api_url, headers={"Authorization": f"Bearer {token}"}, verify=hub.verify(),
                         timeout=30)

    agents: dict[str, AgentProcess] = {}
    codes: dict[str, str] = {}
    for device_id, images, tpm in (("dev-good", release, tpms[0]), ("dev-bad", tampered, tpms[1])):
        codes[device_id] = provision(device_id, MODEL)
        env = {"IOTGUARD_AGENT__BOOT_IMAGES_DIR": str(images),
               "IOTGUARD_AGENT__FIRMWARE_PUBLIC_KEY": firmware_key.public_key().public_bytes_raw().hex()}
        if images == tampered:
            env["IOTGUARD_AGENT__UNSAFE_ALLOW_UNVERIFIED_BOOT"] = "true"  # secure boot bypassed
        if tpm is not None:
            from iotguard.keys.tpm import TpmRootOfTrust

            env["IOTGUARD_AGENT__TPM_TCTI"] = tpm.tcti
            probe = TpmRootOfTrust(tmp_path / f"ek-probe-{device_id}", tcti=tpm.tcti)
            ek = tmp_path / f"{device_id}.ek"
            ek.write_bytes(probe.endorsement_key())  # recorded at manufacture, handed over at enrollment
            probe.close()
            certificate = tmp_path / f"{device_id}.ek.pem"  # the manufacturer's EK certificate chain
            certificate.write_bytes(EkCa(tmp_path / "ek-ca").certify(ek.read_bytes()))
            cli("endorsement-key", device_id, str(ek), "--certificate", str(certificate))
        agents[device_id] = AgentProcess(hub, tmp_path, device_id, env)
    try:
        for device_id, agent in agents.items():
            agent.start(codes[device_id])
        good, bad = agents["dev-good"], agents["dev-bad"]
        _wait_for(lambda: (_appraisals(admin, "dev-good")[:1], _appraisals(admin, "dev-bad")[:1])
                  == (["affirming"], ["contraindicated"]), 90, "appraisals", good, bad)
        posture = cli.posture()
        assert {d: (p["trust_tier"], p["last_appraisal"]) for d, p in posture.items()} \
            == {"dev-good": ("verified", "affirming"), "dev-bad": ("failed", "contraindicated")}
        _wait_for(lambda: "attestation: contraindicated" in bad.output() and "attestation: affirming" in good.output(),
                  30, "agents' reports", good, bad)
        # Cut off at the broker: the hub rewrote Mosquitto's ACL without the tampered device's telemetry.
        _wait_for(lambda: "/dev-bad/telemetry" not in _acl(broker) and "/dev-good/telemetry" in _acl(broker), 30,
                  "broker ACL", bad)
        # The genuine device's readings are stored.
        _wait_for(lambda: _readings(hub, token, "dev-good") >= 1, 60, "genuine readings", good)

        # Quarantined; a release needs fresh affirming evidence: refused now.
        assert admin.post("/v1/devices/dev-bad/quarantine", json={"reason": "implant"}).status_code == 200
        assert admin.post("/v1/devices/dev-bad/release", json={"reason": "r"}).status_code == 403
        # The tampered device sent readings all along (it attests before its first sample), and none of them
        # is stored: the broker dropped them, or ingest refused what got through. A reading of the genuine
        # device stored after it stopped shows the hub has worked through what was in flight.
        bad.stop()
        sent = int(re.findall(r"readings sent (\d+)", bad.output())[-1])
        assert sent >= 1, bad.output()
        stored = _readings(hub, token, "dev-good")
        _wait_for(lambda: _readings(hub, token, "dev-good") > stored, 60, "a later genuine reading", good)
        assert _readings(hub, token, "dev-bad") == 0
        # Repaired: genuine images, secure boot back on, restarted (a TPM resets its PCRs on power-on).
        bad.env["IOTGUARD_AGENT__BOOT_IMAGES_DIR"] = str(release)
        bad.env.pop("IOTGUARD_AGENT__UNSAFE_ALLOW_UNVERIFIED_BOOT")
        if tpms[1] is not None:
            tpms[1].power_cycle()
        bad.start()
        _wait_for(lambda: _appraisals(admin, "dev-bad")[:1] == ["affirming"], 90, "fresh affirming evidence", bad)
        assert cli.posture()["dev-bad"]["trust_tier"] == "verified"
        assert admin.post("/v1/devices/dev-bad/release", json={"reason": "repaired"}).status_code == 200
        _wait_for(lambda: _readings(hub, token, "dev-bad") >= 1, 60, "readings after release", bad)
    finally:
        for agent in agents.values():
            agent.stop()
        admin.close()
