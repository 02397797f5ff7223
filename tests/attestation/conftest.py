"""A simulated device (software or TPM root of trust), signed image sets, reference values, a verifier."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.agent.boot import BootRecord, MeasuredBoot, provision_boot_anchor
from iotguard.agent.evidence import produce_evidence
from iotguard.agent.images import build_image_set
from iotguard.attestation import (
    AppraisalPolicy,
    AttestationResult,
    ReferenceValues,
    Verifier,
    load_appraisal_policy,
    reference_release,
)
from iotguard.keys import SoftwareKeyStore
from iotguard.keys.rot import RootOfTrust
from iotguard.keys.software_rot import SoftwareRootOfTrust
from tests.conftest import _missing
from tests.hub.conftest import HubParts, make_hub

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
MODEL = "sensor-v1"
BINDING = b"attestation test binding: fuse 7"

POLICY = """
[models.sensor-v1]
max_age_seconds = 300
max_clock_skew_seconds = 30
stages = { bootloader = 0, kernel = 4, application = 10, privacy-configuration = 11 }
executables = ["bootloader", "kernel", "application"]
configuration = ["privacy-configuration"]
hardware_affirming = ["tpm2", "software"]

[models.sensor-v1.claims]
instance-identity = "required"
executables = "required"
configuration = "required"
hardware = "required"

[models.gateway-v1]
stages = { bootloader = 0, kernel = 4, application = 10, privacy-configuration = 11 }
executables = ["bootloader", "kernel", "application"]
configuration = ["privacy-configuration"]
hardware_affirming = ["tpm2"]
hardware_warning = ["software"]

[models.gateway-v1.claims]
instance-identity = "required"
executables = "required"
configuration = "required"
hardware = "required"
"""


@dataclass
class Firmware:
    """The vendor's signing key and two signed releases (a staged rollout: both allowed)."""

    key: Ed25519PrivateKey
    releases: dict[str, Path]
    references: ReferenceValues
    policy: AppraisalPolicy = field(default_factory=lambda: load_appraisal_policy(POLICY))

    def verifier(self) -> Verifier:
        return Verifier(self.references, self.policy)


@dataclass
class Device:
    """One simulated device: key store, root of trust, boot anchor, power button."""

    name: str
    store: SoftwareKeyStore
    root: RootOfTrust
    anchor: bytes
    power_cycle: Callable[[], None]
    firmware: Firmware

    def boot(self, images: Path | None = None, *, unsafe_allow_unverified: bool = False) -> BootRecord:
        self.power_cycle()
        chain = MeasuredBoot(self.store, self.root, self.anchor, unsafe_allow_unverified=unsafe_allow_unverified)
        return chain.boot(images or self.firmware.releases["1.0.0"])

    def evidence(self, record: BootRecord, nonce: bytes, now: datetime = NOW) -> bytes:
        return produce_evidence(self.root, record, nonce, now=now, uptime=42)

    def appraise(self, token: bytes, nonce: bytes, now: datetime = NOW, model: str = MODEL) -> AttestationResult:
        ak = self.root.attestation_key()
        return self.firmware.verifier().appraise(token, attestation_key=ak, expected_nonce=nonce, model=model, now=now)


@pytest.fixture
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Firmware:
    key = Ed25519PrivateKey.generate()
    releases: dict[str, Path] = {}
    references = ReferenceValues()
    for version in ("1.0.0", "1.1.0"):
        directory = tmp_path_factory.mktemp(f"release-{version}")
        digests = build_image_set(directory, key.sign, version)
        releases[version] = directory
        references.add(reference_release(MODEL, version, digests))
        references.add(reference_release("gateway-v1", version, digests))
    return Firmware(key, releases, references)


def copy_release(firmware: Firmware, version: str, target: Path) -> Path:
    """A device's own copy of a release's image set (to tamper with)."""
    shutil.copytree(firmware.releases[version], target)
    return target


def _make_device(
    kind: str, request: pytest.FixtureRequest, directory: Path, firmware: Firmware, name: str
) -> tuple[Device, Callable[[], None]]:
    store = SoftwareKeyStore(directory / "keystore", device_binding=BINDING + name.encode())
    anchor = provision_boot_anchor(store, firmware.key.public_key().public_bytes_raw())
    if kind == "software":
        soft = SoftwareRootOfTrust(store)
        return Device(name, store, soft, anchor, soft.power_cycle, firmware), lambda: None
    from iotguard.keys.tpm import TpmRootOfTrust

    tpm = request.getfixturevalue("swtpm")
    root = TpmRootOfTrust(directory / "tpm", tcti=tpm.tcti)
    return Device(name, store, root, anchor, tpm.power_cycle, firmware), root.close


@pytest.fixture(params=["software", pytest.param("tpm2", marks=pytest.mark.swtpm)])
def device(request: pytest.FixtureRequest, tmp_path: Path, firmware: Firmware) -> Iterator[Device]:
    """A device on each root of trust; evidence tests run on both."""
    made, close = _make_device(request.param, request, tmp_path / "device-a", firmware, "device-a")
    yield made
    close()


@pytest.fixture
def other_device(
    request: pytest.FixtureRequest, tmp_path: Path, firmware: Firmware, device: Device
) -> Iterator[Device]:
    """A second device of the same kind (on a TPM: another AK in the same swtpm)."""
    made, close = _make_device(device.root.kind, request, tmp_path / "device-b", firmware, "device-b")
    made.power_cycle = lambda: None
    yield made
    close()


#: The device model the hub fixture attests (the test policy's sensor-v1 under the hub's model name).
HUB_MODEL = "thermo-1"


SWTPM_LOCALCA = shutil.which("swtpm_localca") or "/usr/bin/swtpm_localca"


@dataclass
class EkCa:
    """A TPM manufacturer's CA: swtpm's local CA (a root and an intermediate), as ``swtpm_setup
    --create-ek-cert`` uses it, in its own directory.

    ``roots_file`` is the root certificate (``hub.tpm_ek_roots``); :meth:`certify`
    issues a TCG EK certificate for an EK and returns the chain an operator records.
    """

    directory: Path

    @property
    def roots_file(self) -> Path:
        return self.directory / "swtpm-localca-rootca-cert.pem"

    def issue(self, key: Any) -> Path:
        """Have swtpm_localca issue an EK certificate (DER) for an ECC P-256 public key; returns its file."""
        numbers = key.public_numbers()
        out = self.directory / f"ek-{numbers.x:064x}"
        out.mkdir(exist_ok=True)
        subprocess.run(
            [SWTPM_LOCALCA, "--type", "ek", "--ek", f"x={numbers.x:064x},y={numbers.y:064x},id=secp256r1",
             "--dir", str(out), "--tpm-spec-family", "2.0", "--tpm-spec-level", "0", "--tpm-spec-revision", "164",
             "--tpm-manufacturer", "id:00001014", "--tpm-model", "swtpm", "--tpm-version", "id:20191023", "--tpm2",
             "--configfile", str(self.directory / "localca.conf"), "--optsfile", str(self.directory / "localca.opts")],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        return out / "ek.cert"

    def certify(self, ek_public: bytes) -> bytes:
        """The EK certificate (issued by the intermediate) and the intermediate, as a PEM bundle."""
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import Encoding, load_der_public_key

        from iotguard.keys.tpm import endorsement_key_spki

        key = load_der_public_key(endorsement_key_spki(ek_public))
        assert isinstance(key, ec.EllipticCurvePublicKey)
        out = self.issue(key)
        leaf = x509.load_der_x509_certificate(out.read_bytes())
        return leaf.public_bytes(Encoding.PEM) + (self.directory / "issuercert.pem").read_bytes()


SWTPM_SETUP = shutil.which("swtpm_setup") or "/usr/bin/swtpm_setup"


def manufacture_tpm(state: Path, ca: EkCa) -> None:
    """Manufacture a TPM state as a vendor does: ``swtpm_setup --create-ek-cert --create-platform-cert``
    creates the EKs and writes their certificates, issued by ``ca`` (swtpm_localca), into NV
    (swtpm_setup 0.7: RSA-2048 EK certificate at 0x01c00002, ECC P-384 at 0x01c00016, platform certificate)."""
    if not Path(SWTPM_SETUP).exists():
        _missing("swtpm_setup (Debian swtpm-tools)")
    state.mkdir(parents=True)
    config = state.parent / f"{state.name}-swtpm_setup.conf"
    config.write_text(f"create_certs_tool = {SWTPM_LOCALCA}\n"
                      f"create_certs_tool_config = {ca.directory / 'localca.conf'}\n"
                      f"create_certs_tool_options = {ca.directory / 'localca.opts'}\n")
    subprocess.run([SWTPM_SETUP, "--tpm2", "--tpmstate", str(state), "--create-ek-cert", "--create-platform-cert",
                    "--config", str(config)], check=True, capture_output=True, timeout=300)


@pytest.fixture
def manufactured_swtpm(tmp_path: Path, ek_ca: EkCa) -> Iterator[Any]:
    """An swtpm whose NV holds EK certificates from the test manufacturer (:func:`ek_ca`), as a real TPM does."""
    from tests.conftest import running_swtpm

    state = tmp_path / "swtpm-manufactured"
    manufacture_tpm(state, ek_ca)
    with running_swtpm(state) as tpm:
        yield tpm


def make_ek_ca(directory: Path) -> EkCa:
    """A fresh swtpm local CA in ``directory``: its root and intermediate (made with its first certificate)."""
    if not Path(SWTPM_LOCALCA).exists():
        _missing("swtpm_localca (Debian swtpm-tools)")
    directory.mkdir(parents=True)
    (directory / "localca.conf").write_text(
        f"statedir = {directory}\nsigningkey = {directory}/signkey.pem\n"
        f"issuercert = {directory}/issuercert.pem\ncertserial = {directory}/certserial\n")
    (directory / "localca.opts").write_text("--platform-manufacturer iotguard-tests\n--platform-version 2.1\n"
                                            "--platform-model swtpm\n")
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = EkCa(directory)
    ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key())  # makes the root and the intermediate
    return ca


@pytest.fixture(scope="session")
def ek_ca(tmp_path_factory: pytest.TempPathFactory) -> EkCa:
    """The TPM manufacturer CA the test hubs trust (one per test process: its RSA keys take seconds)."""
    return make_ek_ca(tmp_path_factory.mktemp("ek-ca") / "ca")


def endorse(hub: HubParts, device_id: str, root: RootOfTrust) -> None:
    """Record a TPM device's EK with its manufacturer certificate chain, as enrollment does (ADR 0812)."""
    ca = EkCa(Path(hub.cfg.tpm_ek_roots).parent)
    ek = root.endorsement_key()  # type: ignore[attr-defined]
    hub.services.attestation.certification.record_endorsement_key(device_id, ek, ca.certify(ek))


@pytest.fixture
def hub(request: pytest.FixtureRequest, tmp_path: Path, firmware: Firmware) -> Iterator[HubParts]:
    """A hub that allows both firmware releases of ``thermo-1`` and appraises it with the test policy.

    It trusts the test TPM manufacturer CA (:func:`ek_ca`) for EK certificates where swtpm's local CA exists.
    """
    overrides = {}
    if Path(SWTPM_LOCALCA).exists():
        overrides["tpm_ek_roots"] = str(request.getfixturevalue("ek_ca").roots_file)
    parts = make_hub(tmp_path / "hubside", **overrides)
    service = parts.services.attestation
    service.set_policy(HUB_MODEL, POLICY.split("[models.gateway-v1]")[0].replace(MODEL, HUB_MODEL))
    for version in ("1.0.0", "1.1.0"):
        release = firmware.references.lookup(MODEL, version)
        assert release is not None
        service.add_reference(reference_release(HUB_MODEL, version, release.measurements))
    yield parts
    parts.store.engine.dispose()
