"""``iotguard puf``: PUF quality and fuzzy-extractor reliability of a simulated population."""

from __future__ import annotations

import argparse
import json

from iotguard.keys.puf.report import PufPopulationReport, population_report

__all__ = ["register"]

#: Largest population the report accepts (memory grows as devices x 4 kbit x 12 bytes).
MAX_DEVICES = 20_000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``iotguard puf`` and its subcommands."""
    parser = subparsers.add_parser("puf", help="physically unclonable functions: quality and key reliability")
    sub = parser.add_subparsers(dest="puf_command", metavar="SUBCOMMAND", required=True)
    report = sub.add_parser("report", help="quality metrics and key-failure rate of a simulated population")
    report.add_argument("--devices", type=int, default=1000, help="population size (default 1000)")
    report.add_argument("--seed", type=int, default=1, help="manufacturing and noise seed (default 1)")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    if not 2 <= args.devices <= MAX_DEVICES:
        print(f"iotguard: --devices must be between 2 and {MAX_DEVICES}")
        return 2
    result = population_report(args.devices, seed=args.seed)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_report(result))
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:6.2f} %"


def format_report(r: PufPopulationReport) -> str:
    """Human-readable report."""
    q = r.quality
    e = r.evidence
    lines = [
        f"SRAM PUF population: {r.devices} devices x {r.cells} cells (seed {r.seed})",
        "",
        "Quality (Maiti et al.; ideal in brackets)",
        f"  uniqueness      {_pct(q.uniqueness)}   [50 %]  mean inter-device Hamming distance",
        f"  reliability     {_pct(q.reliability_mean)}   [100 %] nominal corner, "
        f"worst device {_pct(q.reliability_min)}",
        f"  uniformity      {_pct(q.uniformity_mean)}   [50 %]  std {_pct(q.uniformity_std)}",
        f"  bit-aliasing    {_pct(q.bit_aliasing_mean)}   [50 %]  "
        f"range {_pct(q.bit_aliasing_min)} .. {_pct(q.bit_aliasing_max)}",
        "",
        f"Fuzzy extractor: repetition {r.repetition} x BCH(m=8, t=16), {r.response_bits} response bits, "
        f"{r.message_bits} message bits",
        f"  {'corner':<28}{'BER mean':>10}{'BER max':>10}{'keys':>8}{'failed':>8}  analytic at max BER",
    ]
    for c in r.corners:
        lines.append(
            f"  {c.name:<28}{_pct(c.ber_mean):>10}{_pct(c.ber_max):>10}{c.reconstructions:>8}{c.failures:>8}"
            f"  {c.analytic_at_max_ber:.1e}"
        )
    lines += [
        f"  measured key-failure rate: {r.failures} / {r.reconstructions}"
        f" (95 % upper bound {r.failure_rate_upper_95:.1e})",
        "",
        f"Key-failure rate at the {100 * e.ber:.0f} % design bit-error rate (target < 1e-6)",
        f"  analytic                         {e.analytic:.2e}",
        f"  inner code, simulated            {e.inner_measured:.5f} (analytic {e.inner_analytic:.5f})",
        f"  BCH block, importance-sampled    {e.block_importance_sampled:.2e}"
        f" +- {e.block_standard_error:.1e}",
        f"  key, measured                    {e.key_measured:.2e}  (conservative bound {e.key_upper:.2e})",
        "  whole pipeline where failures are countable:",
    ]
    for ber, trials, failures, analytic in e.validation:
        lines.append(
            f"    BER {100 * ber:4.1f} %: {failures:5d} / {trials} failed = {failures / trials:.4f}"
            f"  (analytic {analytic:.4f})"
        )
    lines += [
        "",
        f"Modelling attack (logistic regression, {r.crps_used} exposed CRPs)",
        f"  arbiter PUF (64 stages)   accuracy {_pct(r.arbiter_lr_accuracy)}  <- learnt: never expose CRPs",
        f"  4-XOR arbiter PUF         accuracy {_pct(r.xor4_lr_accuracy)}  (plain LR only)",
    ]
    return "\n".join(lines)
