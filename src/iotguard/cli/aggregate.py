"""``iotguard aggregate run --secure|--he``: a fleet statistic summed without the hub seeing any value.

Runs one round in process over simulated devices with random vectors and
reports whether the sum is exact, what each party sent and how long it
took. ``--secure``: secure aggregation (SecAgg/SecAgg+) with ``--dropout``
of the devices vanishing after sharing; the real thing runs over the device
plane (``POST /v1/aggregate/rounds``, agents' ``aggregate`` requests).
``--he``: packed Paillier, the hub multiplies ciphertexts and decrypts only
together with the independent decryptor's key share.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from iotguard.cli._common import print_json


def _secure(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from iotguard.analytics.secagg_round import run_locally

    rng = np.random.default_rng()
    values = [rng.integers(0, 1 << args.value_bits, args.dims, dtype=np.uint32) for _ in range(args.devices)]
    drop = set(rng.choice(args.devices, int(args.devices * args.dropout), replace=False).tolist())
    start = time.perf_counter()
    out = run_locally(values, args.degree, drop, datetime.now(tz=UTC))
    elapsed = time.perf_counter() - start
    expected = sum((v.astype(np.uint64) for i, v in enumerate(values) if i not in drop), np.zeros(args.dims, np.uint64))
    exact = "sum" in out and out["sum"] == [int(x) for x in expected % (1 << 32)]
    return {"mode": "secure", "phase": out["phase"], "reason": out.get("reason", ""), "devices": args.devices,
            "dropped": len(drop), "survivors": out.get("survivors", 0), "threshold": out.get("threshold", 0),
            "degree": args.degree or args.devices - 1, "dims": args.dims, "exact": exact,
            "bytes_sent": out["bytes"], "plain_bytes": 4 * args.dims * (args.devices - len(drop)),
            "seconds": round(elapsed, 3)}


def _he(args: argparse.Namespace) -> dict[str, Any]:
    import secrets

    from iotguard.analytics.homomorphic import add_ciphertexts, combine_partials, generate_split_key

    pk, hub_share, decryptor_share = generate_split_key(value_bits=args.value_bits)
    values = [[secrets.randbelow(1 << args.value_bits) for _ in range(args.dims)] for _ in range(args.devices)]
    t0 = time.perf_counter()
    cts = [pk.encrypt_vector(v) for v in values]
    t1 = time.perf_counter()
    total = add_ciphertexts(pk, cts)  # the hub: ciphertexts only
    t2 = time.perf_counter()
    plain = combine_partials(pk, hub_share.partial_decrypt(total), decryptor_share.partial_decrypt(total))
    t3 = time.perf_counter()
    exact = pk.unpack(plain, args.dims) == [sum(c) for c in zip(*values, strict=True)]
    ct_bytes = (pk.n2.bit_length() + 7) // 8
    return {"mode": "he", "devices": args.devices, "dims": args.dims, "slots_per_ciphertext": pk.slots,
            "ciphertexts_per_device": len(cts[0]), "exact": exact,
            "bytes_per_device": len(cts[0]) * ct_bytes, "plain_bytes_per_device": 4 * args.dims,
            "encrypt_s_per_device": round((t1 - t0) / args.devices, 4), "hub_sum_s": round(t2 - t1, 4),
            "two_party_decrypt_s": round(t3 - t2, 3)}


def _run(args: argparse.Namespace) -> int:
    doc = _secure(args) if args.secure else _he(args)
    if args.json:
        print_json(doc)
    else:
        print(" ".join(f"{k}={v}" for k, v in doc.items()))
    return 0 if doc["exact"] else 1


def register(sub: Any) -> None:
    """Add ``aggregate`` to the ``iotguard`` parser."""
    p = sub.add_parser("aggregate", help="secure aggregation and homomorphic sums (a simulated round)")
    asub = p.add_subparsers(dest="aggregate_command", metavar="SUBCOMMAND", required=True)
    r = asub.add_parser("run", help="run one round over simulated devices and check the sum is exact")
    mode = r.add_mutually_exclusive_group(required=True)
    mode.add_argument("--secure", action="store_true", help="secure aggregation (pairwise masks, Shamir, dropouts)")
    mode.add_argument("--he", action="store_true", help="packed Paillier with a two-party decryption key")
    r.add_argument("--devices", type=int, default=30)
    r.add_argument("--dims", type=int, default=100)
    r.add_argument("--dropout", type=float, default=1 / 3, help="share of devices vanishing after sharing (--secure)")
    r.add_argument("--degree", type=int, default=0, help="SecAgg+ neighbours per device (even; 0: everyone)")
    r.add_argument("--value-bits", type=int, default=16, help="bits of each simulated value")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_run)
