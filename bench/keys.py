"""Key-store benchmark: signatures per second per backend against bare ``cryptography``.

Backends: software secure element, PKCS#11 on a throwaway SoftHSM2 token (when
SoftHSM2 is installed), PUF-derived keys; plus PUF key reconstructions per
second. The baseline is a bare ``cryptography`` Ed25519 signature measured in
the same run, interleaved round by round with the backends so machine noise
hits both alike. Headline: software key store signatures/s / bare
signatures/s (goal >= 0.8).

    python bench/keys.py [--quick] [--out bench/results/keys.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.keys import KeyKind, Pkcs11KeyStore, PufKeyStore, SoftwareKeyStore
from iotguard.keys.puf import FuzzyExtractor, SramPuf, majority_reference

SOFTHSM_MODULE = os.environ.get("IOTGUARD_SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
MESSAGE = b"\x42" * 64  # a typical envelope digest plus header


def rate(op: Callable[[], object], seconds: float) -> float:
    """Operations per second of ``op`` over about ``seconds``."""
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            op()
        if time.perf_counter() - start > 0.02:
            break
        batch *= 2
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(batch):
            op()
        done += batch
    return done / elapsed


def softhsm_store(workdir: Path) -> Pkcs11KeyStore | None:
    util = shutil.which("softhsm2-util")
    if not Path(SOFTHSM_MODULE).exists() or util is None:
        return None
    (workdir / "tokens").mkdir(parents=True)
    conf = workdir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {workdir / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    subprocess.run(
        [util, "--init-token", "--free", "--label", "bench", "--pin", pin, "--so-pin", secrets.token_hex(8)],
        check=True,
        capture_output=True,
    )
    return Pkcs11KeyStore(SOFTHSM_MODULE, "bench", pin)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 20 s)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "keys.json"))
    args = parser.parse_args()
    seconds, rounds = (0.5, 3) if args.quick else (2.0, 7)

    workdir = Path(tempfile.mkdtemp(prefix="iotguard-bench-keys-"))
    try:
        bare_key = Ed25519PrivateKey.generate()
        software = SoftwareKeyStore(workdir / "software", device_binding=b"bench device binding 0001")
        software.generate("id", KeyKind.ED25519)
        puf = SramPuf.manufacture(seed=1)
        puf_store = PufKeyStore(puf, workdir / "puf")
        puf_store.generate("id", KeyKind.ED25519)
        fe = FuzzyExtractor()
        _, helper = fe.generate(majority_reference(puf, 9))
        hsm = softhsm_store(workdir / "softhsm")
        if hsm is not None:
            hsm.generate("id", KeyKind.ED25519)

        ops: dict[str, Callable[[], object]] = {
            "bare cryptography Ed25519 sign": lambda: bare_key.sign(MESSAGE),
            "software key store sign": lambda: software.sign("id", MESSAGE),
        }
        if hsm is not None:
            ops["PKCS#11 (SoftHSM2) sign"] = lambda: hsm.sign("id", MESSAGE)
        ops["PUF key store sign"] = lambda: puf_store.sign("id", MESSAGE)
        ops["PUF key reconstruction"] = lambda: fe.reproduce(puf.read(), helper)

        samples: dict[str, list[float]] = {name: [] for name in ops}
        for _ in range(rounds):
            for name, op in ops.items():
                samples[name].append(rate(op, seconds))
        medians = {name: statistics.median(v) for name, v in samples.items()}
        ratios_in_round = [
            s / b
            for s, b in zip(
                samples["software key store sign"], samples["bare cryptography Ed25519 sign"], strict=True
            )
        ]
        if hsm is not None:
            hsm.zeroize()
            hsm.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    bare = medians["bare cryptography Ed25519 sign"]
    print(f"{'operation':<34}{'ops/s (median)':>16}{'vs bare':>10}")
    for name, value in medians.items():
        print(f"{name:<34}{value:>16,.0f}{value / bare:>10.2f}")
    if "PKCS#11 (SoftHSM2) sign" not in medians:
        print("PKCS#11: SoftHSM2 not installed, skipped")

    headline_value = medians["software key store sign"]
    result = {
        "benchmark": "keys",
        "headline": {
            "name": "software key store Ed25519 signatures per second",
            "unit": "signatures/s",
            "value": round(headline_value, 1),
            "baseline_name": "bare cryptography Ed25519 signatures per second",
            "baseline_value": round(bare, 1),
            "ratio": round(headline_value / bare, 3),
            "goal": 0.8,
        },
        "results": {name: round(v, 1) for name, v in medians.items()},
        "samples": {name: [round(x, 1) for x in v] for name, v in samples.items()},
        "per_round_ratio_median": round(statistics.median(ratios_in_round), 3),
        "message_bytes": len(MESSAGE),
        "seconds_per_sample": seconds,
        "rounds": rounds,
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"headline ratio {result['headline']['ratio']} (goal >= 0.8) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
