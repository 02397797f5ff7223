"""Attestation benchmark: full appraisals per second against bare signature verification.

A full appraisal is what the verifier does for every piece of evidence: strict
EAT/COSE parse, attestation-key signature (for a TPM: the token is
quote-signed, ADR 0813 — one ES256 signature over the quote's TPMS_ATTEST,
whose extraData must be SHA-256 of the token's Sig_structure), UEID, nonce and
age, quote check, event-log replay against the
quoted PCR digest, reference-value match (two allowed releases) and the
appraisal policy. The baseline, measured in the same run and interleaved
round by round, is one bare ``cryptography`` verification of the same
evidence's signature with the same key type (Ed25519 for the software root,
ECDSA P-256 for the TPM). Evidence comes from a real measured boot: the
software root of trust, and a TPM 2.0 (``swtpm``, started here when installed).

Rates are per CPU-second of this process (``time.process_time``), i.e. per
core, so that other load on a shared machine does not count against either
side; wall-clock rates are reported beside them.

The hub's appraisal path is measured too (``hub appraisal (...)``, unless
``--no-hub``): :meth:`AttestationService.appraise` on a hub's SQLite database
for an enrolled device (a TPM device's AK certified against its EK) — nonce
taken from the database, device key checked, verifier from the stored
reference values and policy, appraisal, its record, and posture + audit +
outbox saved with the nonce's consumption in one transaction (one commit) — over evidence produced beforehand for
nonces the hub issued, interleaved with the baseline rounds. Its ratio to the
bare verification is reported beside the verifier's.

Headline: software-evidence appraisals/s / bare Ed25519 verifications/s
(goal >= 0.5 and >= 2,000 appraisals/s); the TPM's ratio (appraisals / bare
ES256 verifications of the same quote) is reported beside it against the same
goal. Since ADR 0813 a TPM appraisal verifies one signature, not two.

    python bench/attest.py [--quick] [--out bench/results/attest.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key

from iotguard.agent.boot import MeasuredBoot, provision_boot_anchor
from iotguard.agent.evidence import produce_evidence
from iotguard.agent.images import build_image_set
from iotguard.attestation import ReferenceValues, Tier, Verifier, load_appraisal_policy, reference_release
from iotguard.keys import SoftwareKeyStore
from iotguard.keys.rot import RootOfTrust
from iotguard.keys.software_rot import SoftwareRootOfTrust
from iotguard.wire.eat import decode_evidence

MODEL = "sensor-v1"
NONCE = bytes(range(32))
POLICY = """
[models.sensor-v1]
max_age_seconds = 300
stages = { bootloader = 0, kernel = 4, application = 10, privacy-configuration = 11 }
executables = ["bootloader", "kernel", "application"]
configuration = ["privacy-configuration"]
hardware_affirming = ["tpm2", "software"]

[models.sensor-v1.claims]
instance-identity = "required"
executables = "required"
configuration = "required"
hardware = "required"
"""


def rate(op: Callable[[], object], seconds: float, clock: Callable[[], float]) -> float:
    """Operations per second of ``op`` over about ``seconds`` of ``clock``."""
    batch = 1
    while True:
        start = clock()
        for _ in range(batch):
            op()
        if clock() - start > 0.02:
            break
        batch *= 2
    done = 0
    start = clock()
    while (elapsed := clock() - start) < seconds:
        for _ in range(batch):
            op()
        done += batch
    return done / elapsed


def _free_port_pair() -> tuple[int, int]:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port, port + 1
    raise RuntimeError("no two adjacent free ports")


def start_swtpm(state: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """A throwaway swtpm and its TCTI string, started up; ``None`` if swtpm or tpm2-pytss is missing."""
    swtpm = shutil.which("swtpm")
    try:
        from tpm2_pytss import ESAPI, TCTILdr
        from tpm2_pytss.constants import TPM2_SU
    except ImportError:
        return None
    if swtpm is None:
        return None
    state.mkdir(parents=True)
    server, ctrl = _free_port_pair()
    proc = subprocess.Popen(
        [swtpm, "socket", "--tpm2", "--server", f"type=tcp,port={server},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1", "--tpmstate", f"dir={state}",
         "--flags", "not-need-init"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", server), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.terminate()
                return None
            time.sleep(0.05)
    tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={server}")
    esapi = ESAPI(tcti)
    esapi.startup(TPM2_SU.CLEAR)
    esapi.close()
    tcti.close()
    return proc, f"swtpm:host=127.0.0.1,port={server}"


#: The boot record of each root's last boot (evidence for the hub path reuses it).
last_record: dict[str, object] = {}


def prepare(root: RootOfTrust, store: SoftwareKeyStore, images: Path, anchor: bytes, now: datetime) -> bytes:
    record = MeasuredBoot(store, root, anchor).boot(images)
    last_record[root.kind] = record
    return produce_evidence(root, record, NONCE, now=now, uptime=60)


def bare_verifier(token: bytes, ak_der: bytes) -> Callable[[], object]:
    evidence = decode_evidence(token)
    key = load_der_public_key(ak_der)
    # A quote-signed (TPM) token's one signature is over its TPMS_ATTEST.
    data, signature = evidence.signed_attest or evidence.to_be_signed, evidence.signature
    if isinstance(key, Ed25519PublicKey):
        return lambda: key.verify(signature, data)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    algorithm = ec.ECDSA(hashes.SHA256())
    return lambda: key.verify(der, data, algorithm)


HUB_MODEL = "thermo-1"
#: Signature verifications a full appraisal makes: one (a TPM's token is quote-signed, ADR 0813).
SIGNATURES_PER_APPRAISAL = {"software": 1, "tpm2": 1}


class HubPath:
    """The hub's appraisal path (:meth:`AttestationService.appraise`) on a hub's SQLite database.

    One enrolled device per root of trust (a TPM device's AK certified against
    its EK). Per appraisal: the nonce issued to the device taken from the
    database, the device's key checked, the verifier built from the stored
    reference values and policy, the appraisal, then one transaction (one
    commit): the nonce consumed, the appraisal recorded, the posture with its
    audit entry and outbox row saved. Evidence is
    produced beforehand, one per issued nonce (a TPM quote takes milliseconds
    of the TPM's time, which is not the hub's).
    """

    def __init__(self, directory: Path, references: ReferenceValues) -> None:
        from fastapi.testclient import TestClient

        from iotguard.config import AgentConfig, HubConfig
        from iotguard.hub.api import create_app
        from iotguard.hub.compose import build_hub_services

        self.directory = directory
        self.services = build_hub_services(HubConfig(data_dir=str(directory / "hub")))
        self.client = TestClient(create_app(self.services, drain=self.services.drainer("bench").drain))
        self.agent_config = AgentConfig
        service = self.services.attestation
        service.set_policy(HUB_MODEL, POLICY.replace(MODEL, HUB_MODEL))
        for version in ("1.0.0", "1.1.0"):
            found = references.lookup(MODEL, version)
            assert found is not None
            service.add_reference(reference_release(HUB_MODEL, version, found.measurements))

    def enroll(self, device_id: str, root: RootOfTrust) -> None:
        from iotguard.agent import Agent

        cfg = self.agent_config(data_dir=str(self.directory / "agents" / device_id), hub_url="http://testserver",
                                unsafe_plain_http=True)
        agent = Agent(cfg, device_id, http=self.client)  # type: ignore[arg-type]
        agent.enroll(str(self.services.lifecycle.add_device(device_id, HUB_MODEL)))
        ek = getattr(root, "endorsement_key", None)
        if ek is not None:  # a TPM: its EK recorded, its AK certified (setup, not measured)
            store = self.services.attestation.store
            store.set_endorsement_key(device_id, ek(), datetime.now(tz=UTC))
            store.certify_key(device_id, ek(), root.attestation_key(), datetime.now(tz=UTC))

    def evidence(self, device_id: str, root: RootOfTrust, record: object, count: int) -> list[tuple[bytes, bytes]]:
        """``count`` (nonce, evidence) pairs, each nonce issued to the device by the hub."""
        pairs = []
        for _ in range(count):
            nonce = self.services.attestation.challenge(device_id)
            pairs.append((nonce, produce_evidence(root, record, nonce, now=datetime.now(tz=UTC), uptime=60)))  # type: ignore[arg-type]
        return pairs

    def run(self, device_id: str, ak: object, pairs: list[tuple[bytes, bytes]]) -> tuple[float, float]:
        """Appraise every pair; (appraisals per CPU-second, per wall-second)."""
        appraise = self.services.attestation.appraise
        cpu, wall = time.process_time(), time.perf_counter()
        for nonce, token in pairs:
            result = appraise(device_id, nonce, token, ak)  # type: ignore[arg-type]
            if result.status is not Tier.AFFIRMING:
                raise SystemExit(f"hub appraisal of {device_id} not affirming: {result.reasons}")
        return len(pairs) / (time.process_time() - cpu), len(pairs) / (time.perf_counter() - wall)

    def commits_per_appraisal(self, device_id: str, ak: object, pairs: list[tuple[bytes, bytes]]) -> float:
        """Database commits per appraisal (counted by an engine listener, outside the timed runs)."""
        from sqlalchemy import event

        commits = [0]

        def count(_conn: object) -> None:
            commits[0] += 1

        engine = self.services.store.engine
        event.listen(engine, "commit", count)
        try:
            self.run(device_id, ak, pairs)
        finally:
            event.remove(engine, "commit", count)
        return commits[0] / len(pairs)

    def close(self) -> None:
        self.client.close()
        self.services.store.engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 30 s)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attest.json"))
    parser.add_argument("--no-hub", action="store_true", help="leave out the hub's appraisal path")
    args = parser.parse_args()
    seconds, rounds = (0.5, 3) if args.quick else (2.0, 7)

    workdir = Path(tempfile.mkdtemp(prefix="iotguard-bench-attest-"))
    swtpm: subprocess.Popen[bytes] | None = None
    try:
        firmware = Ed25519PrivateKey.generate()
        references = ReferenceValues()
        for version in ("1.0.0", "1.1.0"):
            digests = build_image_set(workdir / version, firmware.sign, version)
            references.add(reference_release(MODEL, version, digests))
        verifier = Verifier(references, load_appraisal_policy(POLICY))
        now = datetime.now(tz=UTC)
        store = SoftwareKeyStore(workdir / "keystore", device_binding=b"bench attestation binding 01")
        anchor = provision_boot_anchor(store, firmware.public_key().public_bytes_raw())
        software = SoftwareRootOfTrust(store)
        software.power_cycle()
        roots: dict[str, RootOfTrust] = {"software": software}
        started = start_swtpm(workdir / "swtpm")
        if started is not None:
            from iotguard.keys.tpm import TpmRootOfTrust

            swtpm, tcti = started
            roots["tpm2"] = TpmRootOfTrust(workdir / "tpm", tcti=tcti)

        hub = None if args.no_hub else HubPath(workdir, references)
        hub_count = {"software": 150 if args.quick else 700, "tpm2": 30 if args.quick else 140}
        hub_devices: dict[str, tuple[str, object, RootOfTrust, object]] = {}
        ops: dict[str, Callable[[], object]] = {}
        evidence_bytes: dict[str, int] = {}
        evidence_ms: dict[str, float] = {}
        for kind, root in roots.items():
            t0 = time.perf_counter()
            token = prepare(root, store, workdir / "1.1.0", anchor, now)
            evidence_ms[kind] = (time.perf_counter() - t0) * 1000
            evidence_bytes[kind] = len(token)
            ak = root.attestation_key()

            def appraise(token: bytes = token, ak: object = ak) -> object:
                return verifier.appraise(token, attestation_key=ak, expected_nonce=NONCE, model=MODEL, now=now)  # type: ignore[arg-type]

            result = verifier.appraise(token, attestation_key=ak, expected_nonce=NONCE, model=MODEL, now=now)
            if result.status is not Tier.AFFIRMING:
                raise SystemExit(f"{kind} evidence did not appraise as affirming: {result.reasons}")
            if hub is not None:
                device_id = f"bench-{kind}"
                hub.enroll(device_id, root)
                hub_devices[kind] = (device_id, ak, root, last_record[kind])
            label = "Ed25519" if ak.algorithm.value == "EdDSA" else "ES256"
            ops[f"bare {label} verify ({kind})"] = bare_verifier(token, ak.public_key)
            ops[f"full appraisal ({kind})"] = appraise

        cpu: dict[str, list[float]] = {name: [] for name in ops}
        wall: dict[str, list[float]] = {name: [] for name in ops}
        hub_cpu: dict[str, list[float]] = {kind: [] for kind in hub_devices}
        hub_wall: dict[str, list[float]] = {kind: [] for kind in hub_devices}
        for _ in range(rounds):
            for name, op in ops.items():
                cpu[name].append(rate(op, seconds, time.process_time))
                wall[name].append(rate(op, seconds / 4, time.perf_counter))
            for kind, (device_id, ak, root, record) in hub_devices.items():
                # Fresh nonces and evidence each round (nonces expire after 5 minutes), not timed.
                if hub is not None:
                    pairs = hub.evidence(device_id, root, record, max(1, hub_count[kind] // rounds))
                    per_cpu, per_wall = hub.run(device_id, ak, pairs)
                    hub_cpu[kind].append(per_cpu)
                    hub_wall[kind].append(per_wall)
        hub_commits: dict[str, float] = {}
        if hub is not None:
            for kind, (device_id, ak, root, record) in hub_devices.items():
                hub_commits[kind] = hub.commits_per_appraisal(device_id, ak, hub.evidence(device_id, root, record, 10))
            hub.close()
        for root in roots.values():
            close = getattr(root, "close", None)
            if close is not None:
                close()
    finally:
        if swtpm is not None:
            swtpm.terminate()
            swtpm.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    medians = {name: statistics.median(v) for name, v in cpu.items()}
    wall_medians = {name: statistics.median(v) for name, v in wall.items()}
    print(f"{'operation':<34}{'per CPU-s':>12}{'per wall-s':>12}")
    for name in ops:
        print(f"{name:<34}{medians[name]:>12,.0f}{wall_medians[name]:>12,.0f}")
    ratios = {}
    for kind in roots:
        bare_name = next(n for n in ops if n.startswith("bare") and n.endswith(f"({kind})"))
        ratios[kind] = medians[f"full appraisal ({kind})"] / medians[bare_name]
        print(f"{kind}: appraisals / bare verifies = {ratios[kind]:.3f} "
              f"({ratios[kind] * SIGNATURES_PER_APPRAISAL[kind]:.3f} of the {SIGNATURES_PER_APPRAISAL[kind]}-signature "
              f"ceiling); evidence {evidence_bytes[kind]} B, "
              f"produced in {evidence_ms[kind]:.1f} ms")  # fmt: skip
    if "tpm2" not in roots:
        print("TPM: swtpm or tpm2-pytss not installed, skipped")
    hub_ratios: dict[str, float] = {}
    for kind, samples in hub_cpu.items():
        bare_name = next(n for n in ops if n.startswith("bare") and n.endswith(f"({kind})"))
        name = f"hub appraisal ({kind})"
        medians[name], wall_medians[name] = statistics.median(samples), statistics.median(hub_wall[kind])
        cpu[name] = samples
        hub_ratios[kind] = medians[name] / medians[bare_name]
        print(f"{name:<34}{medians[name]:>12,.0f}{wall_medians[name]:>12,.0f}   "
              f"ratio to bare verifies {hub_ratios[kind]:.3f}; {hub_commits[kind]:.2f} commits per appraisal")

    value = medians["full appraisal (software)"]
    baseline = medians["bare Ed25519 verify (software)"]
    result = {
        "benchmark": "attest",
        "headline": {
            "name": "full appraisals of software-root evidence per CPU-second",
            "unit": "appraisals/s",
            "value": round(value, 1),
            "baseline_name": "bare Ed25519 verifications of the same evidence per CPU-second",
            "baseline_value": round(baseline, 1),
            "ratio": round(value / baseline, 3),
            "goal": 0.5,
        },
        "goal_appraisals_per_second": 2000,
        "tpm": {
            "name": "full appraisals of quote-signed TPM evidence per CPU-second",
            "value": round(medians["full appraisal (tpm2)"], 1) if "tpm2" in roots else None,
            "baseline_name": "bare ES256 verifications of the same quote per CPU-second",
            "baseline_value": round(medians["bare ES256 verify (tpm2)"], 1) if "tpm2" in roots else None,
            "ratio": round(ratios["tpm2"], 3) if "tpm2" in roots else None,
            "goal": 0.5,
        },
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        # Signatures an appraisal verifies, and the ratio to that ceiling (1.0 = nothing but signatures).
        "signatures_per_appraisal": {k: SIGNATURES_PER_APPRAISAL[k] for k in ratios},
        "ratios_to_signature_ceiling": {k: round(v * SIGNATURES_PER_APPRAISAL[k], 3) for k, v in ratios.items()},
        # The hub's path: nonce from the database, key check, verifier from the stored reference values
        # and policy, appraisal, its record, posture + audit + outbox in one SQLite transaction.
        "hub_path_ratios": {k: round(v, 3) for k, v in hub_ratios.items()},
        "hub_path_appraisals_per_round": {k: max(1, hub_count[k] // rounds) for k in hub_devices},
        "hub_path_commits_per_appraisal": {k: round(v, 2) for k, v in hub_commits.items()},
        "results_per_cpu_second": {name: round(v, 1) for name, v in medians.items()},
        "results_per_wall_second": {name: round(v, 1) for name, v in wall_medians.items()},
        "samples_per_cpu_second": {name: [round(x, 1) for x in v] for name, v in cpu.items()},
        "evidence_bytes": evidence_bytes,
        "evidence_production_ms": {k: round(v, 1) for k, v in evidence_ms.items()},
        "seconds_per_sample": seconds,
        "rounds": rounds,
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": sys.version.split()[0],
        },
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"headline {value:,.0f} appraisals/s, ratio {result['headline']['ratio']} (goal >= 0.5, >= 2,000/s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
