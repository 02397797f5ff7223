"""``iotguard aggregate run|decryptor-keygen|open``: a fleet statistic summed without the hub seeing any value.

Runs one round in process over simulated devices with random vectors and
reports whether the sum is exact, what each party sent and how long it
took. ``--secure``: secure aggregation (SecAgg/SecAgg+) with ``--dropout``
of the devices vanishing after sharing; the real thing runs over the device
plane (``POST /v1/aggregate/rounds``, agents' ``aggregate`` requests).
``--he``: Ring-LWE homomorphic sums, the hub adds ciphertexts and decrypts
only together with the independent decryptor's key share.
``decryptor-keygen`` and ``open`` are the decryptor's side of a real HE round
(``POST /v1/aggregate/he-rounds``).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from iotguard.cli._common import print_json
from iotguard.errors import ConfigError


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

    from iotguard.analytics.rlwe import CIPHERTEXT_BYTES, add_ciphertexts, combine_partials, generate_split_key

    pk, hub_share, decryptor_share = generate_split_key(args.value_bits, max(2, args.devices))
    values = [[secrets.randbelow(1 << args.value_bits) for _ in range(args.dims)] for _ in range(args.devices)]
    t0 = time.perf_counter()
    cts = [pk.encrypt_vector(v) for v in values]
    t1 = time.perf_counter()
    total = add_ciphertexts(pk.params, cts)  # the hub: ciphertexts only
    t2 = time.perf_counter()
    partials = [hub_share.partial_decrypt(pk.params, total), decryptor_share.partial_decrypt(pk.params, total)]
    plain = combine_partials(pk.params, total, partials, args.dims)
    t3 = time.perf_counter()
    exact = plain == [sum(c) for c in zip(*values, strict=True)]
    return {"mode": "he", "scheme": "rlwe", "devices": args.devices, "dims": args.dims,
            "values_per_ciphertext": pk.params.slots, "ciphertexts_per_device": len(cts[0]), "exact": exact,
            "bytes_per_device": len(cts[0]) * CIPHERTEXT_BYTES, "plain_bytes_per_device": 4 * args.dims,
            "encrypt_s_per_device": round((t1 - t0) / args.devices, 4), "hub_sum_s": round(t2 - t1, 4),
            "two_party_decrypt_s": round(t3 - t2, 3)}


def _keygen(args: argparse.Namespace) -> int:
    """The decryptor's key share for a new public polynomial: the share to a 0600 file, the public part out."""
    import os

    from iotguard.analytics.he_round import new_decryptor_share

    share, public = new_decryptor_share()
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create the share file {args.out}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(share.to_bytes())
    print_json(public)
    return 0


def _open(args: argparse.Namespace) -> int:
    """The decryptor opens a done round's result (``GET /v1/aggregate/rounds/{id}``) with its share."""
    import json
    from pathlib import Path

    from iotguard.analytics.he_round import open_result
    from iotguard.analytics.rlwe import RlweKeyShare, RlweParams

    try:
        share = RlweKeyShare.from_bytes("decryptor", Path(args.share).read_bytes())
        result = json.loads(Path(args.result).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the share or the round's result: {exc}") from None
    print_json({"round": result.get("round", ""), "sum": open_result(result, RlweParams(args.value_bits,
                                                                                          args.max_summands), share)})
    return 0


def _run(args: argparse.Namespace) -> int:
    doc = _secure(args) if args.secure else _he(args)
    if args.json:
        print_json(doc)
    else:
        print(" ".join(f"{k}={v}" for k, v in doc.items()))
    return 0 if doc["exact"] else 1


def register(sub: Any) -> None:
    """Add ``aggregate`` to the ``iotguard`` parser."""
    p = sub.add_parser("aggregate", help="secure aggregation and homomorphic sums "
                       "(simulated rounds; the decryptor's side of HE rounds)")
    asub = p.add_subparsers(dest="aggregate_command", metavar="SUBCOMMAND", required=True)
    r = asub.add_parser("run", help="run one round over simulated devices and check the sum is exact")
    mode = r.add_mutually_exclusive_group(required=True)
    mode.add_argument("--secure", action="store_true", help="secure aggregation (pairwise masks, Shamir, dropouts)")
    mode.add_argument("--he", action="store_true", help="Ring-LWE homomorphic sums with a two-party decryption key")
    r.add_argument("--devices", type=int, default=30)
    r.add_argument("--dims", type=int, default=100)
    r.add_argument("--dropout", type=float, default=1 / 3, help="share of devices vanishing after sharing (--secure)")
    r.add_argument("--degree", type=int, default=0, help="SecAgg+ neighbours per device (even; 0: everyone)")
    r.add_argument("--value-bits", type=int, default=16, help="bits of each simulated value")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_run)
    k = asub.add_parser("decryptor-keygen", help="the independent decryptor's key share for HE rounds "
                        "(prints the seed and public part an HE round is started with)")
    k.add_argument("--out", required=True, help="new file for the secret share (created 0600, never overwritten)")
    k.set_defaults(func=_keygen)
    o = asub.add_parser("open", help="the decryptor opens a done HE round's result with its share")
    o.add_argument("result", help="the round's JSON (GET /v1/aggregate/rounds/{id})")
    o.add_argument("--share", required=True, help="the decryptor's share file (decryptor-keygen --out)")
    o.add_argument("--value-bits", type=int, required=True, help="the round's value_bits")
    o.add_argument("--max-summands", type=int, required=True, help="the round's max_summands")
    o.set_defaults(func=_open)
