"""Policy tests as data: requests with expected decisions, in JSON files.

A case file describes a small fleet (segments, datasets, devices with
posture) at one instant and a list of cases. Each case names a request and
the expected decision, optionally the determining policy ids and decision
code, and may override posture for itself. ``iotguard policy test`` and the
test suite run the same files; the shipped ones live in
``iotguard/policy/cases/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from iotguard.errors import ConfigError
from iotguard.policy.engine import PolicyEngine
from iotguard.policy.model import AccessRequest, Decision, PurposeFacts
from iotguard.policy.policyset import PolicySchema, PolicySet
from iotguard.policy.posture import Posture, PostureStore, SegmentSpec

__all__ = ["CaseResult", "load_case_file", "posture_from_spec", "run_case_file", "shipped_case_files"]

_POSTURE_KEYS = frozenset(
    {
        "segment",
        "model",
        "trust_tier",
        "risk_score",
        "cert_days",
        "attested_seconds_ago",
        "declared_location",
        "quarantined",
    }
)


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case."""

    file: str
    name: str
    passed: bool
    decision: Decision
    message: str


def shipped_case_files() -> list[Path]:
    """The case files shipped with the package."""
    root = resources.files("iotguard.policy").joinpath("cases")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".json"))


def load_case_file(path: Path) -> dict[str, Any]:
    """Read and minimally check a case file.

    Raises:
        ConfigError: Not JSON, or no ``cases`` list.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read policy case file {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise ConfigError(f"{path}: a case file is an object with a 'cases' list")
    return data


def _entity(ref: str) -> tuple[str, str]:
    kind, sep, ident = ref.partition("::")
    if not sep or not kind or not ident:
        raise ConfigError(f"entity reference {ref!r} is not Type::id")
    return kind, ident.strip('"')


def posture_from_spec(device_id: str, spec: dict[str, Any], now: datetime) -> Posture:
    """Build a posture from a case-file device spec (``cert_days``, ``attested_seconds_ago``...).

    Raises:
        ConfigError: Unknown keys or invalid values.
    """
    unknown = set(spec) - _POSTURE_KEYS
    if unknown:
        raise ConfigError(f"device {device_id}: unknown posture keys {sorted(unknown)}")
    cert_days = spec.get("cert_days", 30)
    attested = spec.get("attested_seconds_ago")
    return Posture(
        device_id=device_id,
        segment=str(spec["segment"]),
        model=str(spec.get("model", "")),
        trust_tier=str(spec.get("trust_tier", "verified")),
        risk_score=int(spec.get("risk_score", 0)),
        cert_not_after=None if cert_days is None else now + timedelta(days=float(cert_days)),
        attested_at=None if attested is None else now - timedelta(seconds=float(attested)),
        declared_location=str(spec.get("declared_location", "")),
        quarantined=bool(spec.get("quarantined", False)),
    )


def _segments(raw: dict[str, Any]) -> dict[str, SegmentSpec]:
    out = {}
    for name, spec in raw.items():
        window = spec.get("update_window", [0, 24])
        out[name] = SegmentSpec(
            quarantined=bool(spec.get("quarantined", False)),
            sites=frozenset(spec.get("sites", [])),
            update_window_start=int(window[0]),
            update_window_end=int(window[1]),
        )
    return out


def run_case_file(path: Path, policy_set: PolicySet, schema: PolicySchema | None = None) -> list[CaseResult]:
    """Run every case of one file against ``policy_set``.

    Raises:
        ConfigError: The file is malformed.
    """
    data = load_case_file(path)
    now = datetime.fromisoformat(str(data.get("now", "2026-01-01T12:00:00+00:00")).replace("Z", "+00:00"))
    segments = _segments(data.get("segments", {}))
    datasets = {str(k): bool(v) for k, v in data.get("datasets", {}).items()}
    devices: dict[str, dict[str, Any]] = data.get("devices", {})
    results: list[CaseResult] = []
    for case in data["cases"]:
        name = str(case.get("name", "?"))
        fleet = {d: {**spec, **case.get("posture", {}).get(d, {})} for d, spec in devices.items()}
        store = PostureStore(posture_from_spec(d, spec, now) for d, spec in fleet.items())
        engine = PolicyEngine(policy_set, schema, posture=store, segments=segments, datasets=datasets)
        p_kind, p_id = _entity(str(case["principal"]))
        r_kind, r_id = _entity(str(case["resource"]))
        facts = case.get("purpose")
        purpose = (PurposeFacts(str(facts["purpose"]), facts.get("declared"), facts.get("consented"))
                   if isinstance(facts, dict) else None)
        request = AccessRequest(p_kind, p_id, str(case["action"]), r_kind, r_id, str(case.get("role", "")), purpose)
        decision = engine.decide(request, now=now)
        problems = []
        expect = case.get("expect")
        if expect not in ("allow", "deny"):
            raise ConfigError(f"{path}:{name}: expect must be 'allow' or 'deny'")
        if decision.allowed != (expect == "allow"):
            problems.append(f"expected {expect}, got {decision.summary()}")
        if "policies" in case and sorted(case["policies"]) != sorted(decision.reasons):
            problems.append(f"expected policies {sorted(case['policies'])}, got {sorted(decision.reasons)}")
        if "code" in case and case["code"] != decision.code:
            problems.append(f"expected code {case['code']}, got {decision.code}")
        results.append(CaseResult(path.name, name, not problems, decision, "; ".join(problems)))
    return results
