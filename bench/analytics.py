"""Private-analytics benchmark: secure aggregation, homomorphic sums, central DP, each next to a baseline.

Three parts, one run:

1. Secure aggregation (SecAgg+ over the round protocol the hub runs, all
   messages encoded as on the device channel) of 1,000 devices x 10,000-
   dimensional vectors with a third of the devices dropping after sharing,
   next to the plain sum of the same vectors (each survivor sends its 4-byte
   words; the hub adds them). ``secagg_comm_expansion`` = bytes the devices
   send / bytes of the plain sum; ``secagg_compute_ratio`` = the hub's
   computation / the plain sum's. Bonawitz et al. report 1.73x communication
   expansion at 2^10 users and 2^20 dimensions. Goals: <= 2x and <= 10x.
2. Homomorphic sums: values summed per second by the hub on Ring-LWE
   ciphertexts (N = 8192, 155-bit modulus, two-party key; ADR 0418), next
   to ``phe`` (python-paillier, 2048-bit, one value per ciphertext: the
   baseline only, installed for the bench with gmpy2, not a dependency of
   iotguard) in the same run. Headline ratio = iotguard's
   sums/s per value / phe's; goal >= 100.
3. Central DP: error of a fleet sum when subjects contribute many readings,
   iotguard's release (contribution bounded to k rows per subject, OpenDP
   Laplace calibrated to k) next to a naive Laplace on the sum calibrated to
   the largest contribution any subject could make (what a correct release
   without contribution bounding must use).

    python bench/analytics.py [--quick] [--secagg-only] [--out bench/results/analytics.json]

``--secagg-only`` runs part 1 alone and writes only its figures (the
communication expansion is a byte count, the same on any machine; the
compute ratio depends on the machine's load).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from iotguard.analytics import CentralQuery, InMemorySubjectLedgerStore, SubjectLedger, release
from iotguard.analytics.rlwe import CIPHERTEXT_BYTES, PRIMES, add_ciphertexts, combine_partials, generate_split_key
from iotguard.analytics.secagg import degree_failure_log2, secagg_plus_degree
from iotguard.analytics.secagg_round import decode_message, encode_message, run_locally

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def plain_round(values: list[np.ndarray], drop: set[int]) -> dict[str, Any]:
    """The fair baseline: the same round path without masking. Each surviving device polls (the hub encodes
    the poll reply as in a round), encodes its vector as the masked step's message (canonical CBOR
    ``{"vector": little-endian words}``); the hub decodes it strictly, checks its length and adds it.
    CPU seconds for the hub and the devices, as :func:`run_locally` counts them."""
    dims = len(values[0])
    clock = {"hub": 0.0, "devices": 0.0}
    total = np.zeros(dims, dtype=np.uint32)
    sent = 0
    for i, v in enumerate(values):
        if i in drop:
            continue
        t0 = time.process_time()
        poll = decode_message(encode_message({"phase": "masked", "dims": dims}), {"phase", "dims"})
        t1 = time.process_time()
        if poll["dims"] != len(v):
            raise SystemExit("plain round: wrong dims")
        msg = encode_message({"vector": np.asarray(v, dtype="<u4").tobytes()})
        t2 = time.process_time()
        raw = decode_message(msg, {"vector"})["vector"]
        if not isinstance(raw, bytes) or len(raw) != 4 * dims:
            raise SystemExit("plain round: wrong length")
        np.add(total, np.frombuffer(raw, dtype="<u4"), out=total)
        t3 = time.process_time()
        clock["hub"] += (t1 - t0) + (t3 - t2)
        clock["devices"] += t2 - t1
        sent += len(msg)
    return {"sum": total, "hub_s": clock["hub"], "devices_s": clock["devices"], "bytes": sent}


def secagg(devices: int, dims: int, degree: int, dropout: float) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    values = [rng.integers(0, 1 << 16, dims, dtype=np.uint32) for _ in range(devices)]
    drop = set(rng.choice(devices, int(devices * dropout), replace=False).tolist())
    survivors = [i for i in range(devices) if i not in drop]
    expected = np.zeros(dims, dtype=np.uint64)
    for i in survivors:
        expected += values[i]
    # baselines before and after the secure round (interleaved against the machine's load), the median kept
    plains = [plain_round(values, drop)]
    started = time.perf_counter()
    out = run_locally(values, degree, drop, T0)
    wall = time.perf_counter() - started
    plains += [plain_round(values, drop) for _ in range(2)]
    if not all(np.array_equal(p["sum"], (expected % (1 << 32)).astype(np.uint32)) for p in plains):
        raise SystemExit("plain round: wrong sum")
    exact = "sum" in out and out["sum"] == [int(x) for x in expected % (1 << 32)]
    fair_hub = statistics.median(p["hub_s"] for p in plains)
    fair_dev = statistics.median(p["devices_s"] for p in plains)
    # the strict baseline: a bare NumPy sum of the survivors' vectors (no transport, no parsing)
    arrays = [values[i] for i in survivors]
    t0 = time.process_time()
    for _ in range(3):
        total = np.zeros(dims, dtype=np.uint32)
        for a in arrays:
            np.add(total, a, out=total)
    bare_s = (time.process_time() - t0) / 3
    plain_bytes = plains[0]["bytes"]
    sent = sum(out["bytes"].values())
    k = degree or devices - 1
    return {"devices": devices, "dims": dims, "degree": k, "dropped": len(drop),
            "degree_failure_log2": degree_failure_log2(devices, len(drop), k) if k < devices - 1 else None,
            "survivors": out.get("survivors", 0), "threshold": out.get("threshold", 0), "phase": out["phase"],
            "reason": out.get("reason", ""),
            "exact": exact, "device_bytes_sent": out["bytes"], "device_bytes_received": out["received"],
            "plain_bytes": plain_bytes, "secagg_comm_expansion": sent / plain_bytes,
            "secagg_comm_expansion_with_downloads": (sent + out["received"]) / plain_bytes,
            "hub_s": out["hub_s"], "plain_round_hub_s": fair_hub, "plain_round_devices_s": fair_dev,
            "plain_bare_numpy_s": bare_s,
            "secagg_compute_ratio": out["hub_s"] / fair_hub,
            "secagg_compute_ratio_strict": out["hub_s"] / bare_s,
            "secagg_total_cpu_ratio": (out["hub_s"] + out["devices_s"]) / (fair_hub + fair_dev),
            "device_s_mean": out["devices_s"] / devices, "plain_round_device_s_mean": fair_dev / len(survivors),
            "wall_s": wall}


def he(devices: int, dims: int, phe_values: int) -> dict[str, Any]:
    from phe import paillier

    pk, hub_share, decryptor = generate_split_key(32, max(devices, 2))
    n_ct = pk.params.ciphertexts(dims)
    rng = np.random.default_rng(0)
    # ciphertexts cost the same to add whatever they hold: encrypt four devices' vectors, reuse them for every device
    t0 = time.process_time()
    pool = [pk.encrypt_vector([int(v) for v in rng.integers(0, 1 << 32, dims)]) for _ in range(4)]
    enc_per_device = (time.process_time() - t0) / len(pool)
    vectors = [pool[d % len(pool)] for d in range(devices)]
    t0 = time.process_time()
    total = add_ciphertexts(pk.params, vectors)  # from the bytes as received: parsed, range-checked, added
    ours_s = time.process_time() - t0
    ours_rate = devices * dims / ours_s  # the values summed; the last ciphertext's padding is not counted
    t0 = time.process_time()
    partials = [hub_share.partial_decrypt(pk.params, total), decryptor.partial_decrypt(pk.params, total)]
    opened = combine_partials(pk.params, total, partials, dims)
    decrypt_s = time.process_time() - t0
    round_rate = _round_rate(pk, hub_share, min(devices, 200), dims)
    phe_pk, _phe_sk = paillier.generate_paillier_keypair(n_length=2048)
    t0 = time.process_time()
    phe_pool = [phe_pk.encrypt(v) for v in range(16)]
    phe_enc = (time.process_time() - t0) / len(phe_pool)
    phe_devices = max(2, phe_values // 200)
    phe_vectors = [[phe_pool[(d + i) % len(phe_pool)] for i in range(200)] for d in range(phe_devices)]
    t0 = time.process_time()
    acc = list(phe_vectors[0])
    for vec in phe_vectors[1:]:
        for i, c in enumerate(vec):
            acc[i] = acc[i] + c
    phe_s = time.process_time() - t0
    phe_rate = (phe_devices - 1) * 200 / phe_s
    return {"scheme": "ring-lwe (BFV-style), two-party key", "ring_degree": pk.params.slots,
            "modulus_bits": sum(p.bit_length() for p in PRIMES), "plaintext_bits": pk.params.t.bit_length() - 1,
            "devices": devices, "dims": dims, "ciphertexts_per_device": n_ct,
            "sums_per_s_per_value": ours_rate, "phe_sums_per_s_per_value": phe_rate,
            "round_path_sums_per_s_per_value": round_rate,
            "encrypt_s_per_value": enc_per_device / dims, "phe_encrypt_s_per_value": phe_enc,
            "two_party_decrypt_s": decrypt_s, "decrypted_values": len(opened),
            "bytes_per_value": n_ct * CIPHERTEXT_BYTES / dims, "phe_bytes_per_value": 512,
            "ratio": ours_rate / phe_rate, "round_path_ratio": round_rate / phe_rate, "phe_uses_gmpy2": _phe_gmpy2()}


def _round_rate(pk: Any, hub_share: Any, devices: int, dims: int) -> float:
    """Values per second through the hub's round path: each part's CBOR decoded, checked and added.

    One more device is invited than sends, so the round stays open (the measured work is the adding only).
    """
    from iotguard.analytics.he_round import HeRound, HeRoundSpec, encrypt_for_round

    spec = HeRoundSpec(tuple(f"d{i}" for i in range(devices + 1)), dims, pk, hub_share, timedelta(hours=1))
    poll = {"seed": pk.seed, "value_bits": 32, "max_summands": pk.params.max_summands, "dims": dims}
    rows = [pk.b_hat[j].astype("<u4").tobytes() for j in range(len(PRIMES))]
    messages = [encrypt_for_round(poll, rows, [1] * dims)[1] for _ in range(2)]
    r = HeRound(spec, T0)
    t0 = time.process_time()
    for i, d in enumerate(spec.devices[:devices]):
        for m in messages[i % 2]:
            r.submit(d, m, T0)
    return devices * dims / (time.process_time() - t0)


def _print_he(h: dict[str, Any]) -> None:
    print(f"homomorphic sums: {h['sums_per_s_per_value']:.3g} values/s ({h['ring_degree']} per ciphertext; "
          f"round path {h['round_path_sums_per_s_per_value']:.3g}) vs phe {h['phe_sums_per_s_per_value']:.3g}: "
          f"x{h['ratio']:.0f} (round path x{h['round_path_ratio']:.0f}); encrypt "
          f"{h['encrypt_s_per_value'] * 1e6:.2f} us/value vs phe {h['phe_encrypt_s_per_value'] * 1e6:.0f}; "
          f"two-party decryption {h['two_party_decrypt_s']:.2f} s")


def _phe_gmpy2() -> bool:
    from phe import util

    return bool(getattr(util, "HAVE_GMP", False))


def central(subjects: int, trials: int, k: int, cap: int) -> dict[str, Any]:
    """Fleet sum of readings in [0, 40]; each subject sends 1..k readings.

    iotguard bounds contributions to ``k`` rows per subject and calibrates OpenDP's Laplace to that. The naive
    release adds Laplace noise to the raw sum; to be differentially private per subject it must be calibrated
    to the most a subject may contribute without bounding (``cap`` readings, e.g. a day at the contract's
    reading rate). A second baseline draws numpy's (floating-point, unsafe) Laplace at iotguard's scale: the
    exact samplers cost no accuracy.
    """
    rng = random.Random(11)
    rows = [(f"s{s}", rng.uniform(10.0, 30.0)) for s in range(subjects) for _ in range(rng.randint(1, k))]
    truth = sum(v for _, v in rows)
    eps, hi = 1.0, 40.0
    ledger = SubjectLedger(InMemorySubjectLedgerStore(), 1e9, timedelta(days=1)).for_source("central")
    q = CentralQuery("sum", eps, 0.0, hi, max_per_subject=k)
    ours = [float(release(q, rows, ledger, "bench", T0).value) for _ in range(trials)]  # type: ignore[arg-type]
    nrng = np.random.default_rng(12)
    naive = truth + nrng.laplace(0.0, cap * hi / eps, trials)
    same = truth + nrng.laplace(0.0, k * hi / eps, trials)
    rmse = math.sqrt(statistics.fmean((v - truth) ** 2 for v in ours))
    naive_rmse = float(np.sqrt(np.mean((naive - truth) ** 2)))
    same_rmse = float(np.sqrt(np.mean((same - truth) ** 2)))
    return {"subjects": subjects, "rows": len(rows), "k": k, "naive_cap_rows_per_subject": cap, "epsilon": eps,
            "true_sum": truth, "iotguard_rmse": rmse, "naive_laplace_rmse": naive_rmse,
            "numpy_laplace_same_scale_rmse": same_rmse, "iotguard_relative_rmse": rmse / truth,
            "ratio_naive_over_iotguard_rmse": naive_rmse / rmse, "trials": trials}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (about a minute)")
    ap.add_argument("--degree", type=int, default=None,
                    help="SecAgg+ degree (default: secagg_plus_degree for a third dropped, 2^-30 failure)")
    ap.add_argument("--secagg-only", action="store_true", help="only part 1, secure aggregation (its own JSON)")
    ap.add_argument("--he-only", action="store_true", help="only part 2, homomorphic sums (its own JSON)")
    ap.add_argument("--dropout", type=float, default=1 / 3,
                    help="share of devices that drop after sharing in the run (default a third; the degree is "
                         "still chosen to tolerate a third)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "analytics.json"))
    args = ap.parse_args()
    q = args.quick
    started = time.time()
    load_before = os.getloadavg()
    if args.he_only:
        h = he(200 if q else 1000, 1000 if q else 10_000, 4000 if q else 20_000)
        _print_he(h)
        return _write(Path(args.out), {"benchmark": "analytics (homomorphic sums only)", "ratio": h["ratio"],
                                       "goal": 100, "goal_met": h["ratio"] >= 100, "homomorphic": h,
                                       **_machine(q, started, load_before)})
    n_sa = 100 if q else 1000
    degree = args.degree if args.degree is not None else secagg_plus_degree(n_sa, 1 / 3)
    if not 0 <= args.dropout <= 1 / 3:
        ap.error("--dropout is between 0 and 1/3")
    sa = secagg(n_sa, 1000 if q else 10_000, degree, args.dropout)
    print(f"secure aggregation: {sa['devices']} devices x {sa['dims']} dims, degree {sa['degree']}, "
          f"{sa['dropped']} dropped, exact={sa['exact']}")
    print(f"  communication x{sa['secagg_comm_expansion']:.2f} (x{sa['secagg_comm_expansion_with_downloads']:.2f} "
          f"with downloads); hub {sa['hub_s']:.2f} s vs bare NumPy {sa['plain_bare_numpy_s'] * 1000:.1f} ms "
          f"(x{sa['secagg_compute_ratio_strict']:.0f}); fair plain round hub {sa['plain_round_hub_s'] * 1000:.1f} ms "
          f"(x{sa['secagg_compute_ratio']:.0f}); {sa['device_s_mean'] * 1000:.0f} ms per device "
          f"(plain {sa['plain_round_device_s_mean'] * 1e6:.0f} us); all CPU x{sa['secagg_total_cpu_ratio']:.0f}")
    if args.secagg_only:
        return _write(Path(args.out), {
            "benchmark": "analytics (secure aggregation only)",
            "secagg_comm_expansion": sa["secagg_comm_expansion"],
            "secagg_compute_ratio": sa["secagg_compute_ratio"],
            "secagg_compute_ratio_strict": sa["secagg_compute_ratio_strict"],
            "goals": {"secagg_comm_expansion_max": 2.0, "secagg_compute_ratio_max": 10.0},
            "goal_met": {"secagg_comm": sa["secagg_comm_expansion"] <= 2.0,
                         "secagg_compute": sa["secagg_compute_ratio"] <= 10.0},
            "secure_aggregation": sa, "notes": _SECAGG_NOTES, **_machine(q, started, load_before)})
    h = he(200 if q else 1000, 1000 if q else 10_000, 4000 if q else 20_000)
    _print_he(h)
    c = central(2000 if q else 10_000, 100 if q else 400, 5, 24 * 4)
    print(f"central DP sum: RMSE {c['iotguard_rmse']:.0f} (bounded k={c['k']}) vs naive Laplace "
          f"{c['naive_laplace_rmse']:.0f}: x{c['ratio_naive_over_iotguard_rmse']:.1f}; numpy Laplace at the same "
          f"scale {c['numpy_laplace_same_scale_rmse']:.0f}")
    headline = {"name": "homomorphic sums per second per value (Ring-LWE, N = 8192, two-party key)",
                "unit": "values/s",
                "value": h["sums_per_s_per_value"], "baseline_name": "phe Paillier-2048, one value per ciphertext",
                "baseline_value": h["phe_sums_per_s_per_value"], "ratio": h["ratio"], "goal": 100}
    result = {
        "benchmark": "analytics",
        "headline": headline,
        "secagg_comm_expansion": sa["secagg_comm_expansion"],
        "secagg_compute_ratio": sa["secagg_compute_ratio"],
        "secagg_compute_ratio_strict": sa["secagg_compute_ratio_strict"],
        "goals": {"secagg_comm_expansion_max": 2.0, "secagg_compute_ratio_max": 10.0, "he_ratio_min": 100},
        "goal_met": {"secagg_comm": sa["secagg_comm_expansion"] <= 2.0,
                     "secagg_compute": sa["secagg_compute_ratio"] <= 10.0, "he": h["ratio"] >= 100},
        "secure_aggregation": sa,
        "homomorphic": h,
        "central_dp": c,
        "notes": _SECAGG_NOTES + " Homomorphic sums: iotguard adds Ring-LWE ciphertexts from the bytes as "
                 "received (parsed and range-checked); round_path_* goes through the hub's round code (CBOR parts). "
                 "phe uses gmpy2 when installed (phe_uses_gmpy2) and adds ciphertexts as Python integers.",
        **_machine(q, started, load_before),
    }
    print(f"headline: x{h['ratio']:.0f} (goal >= 100)")
    return _write(Path(args.out), result)


_SECAGG_NOTES = ("Secure aggregation runs every device in this one process; hub_s counts only the coordinator's "
                 "work (parsing, relaying, unmasking), device_s_mean one device's. secagg_compute_ratio is against "
                 "the fair baseline (the same round messages without masking: poll reply, CBOR-encoded vector, "
                 "strict decode, add; CPU time, median of 3 runs around the secure round); "
                 "secagg_compute_ratio_strict against a bare NumPy sum of the survivors' vectors.")


def _machine(quick: bool, started: float, load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
            "load_avg_before_after": [list(load_before), list(os.getloadavg())], "quick": quick,
            "seconds": round(time.time() - started, 1), "date": datetime.now(tz=UTC).isoformat(timespec="seconds")}


def _write(out: Path, result: dict[str, Any]) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
