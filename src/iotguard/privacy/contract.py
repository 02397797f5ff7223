"""Purpose-declared data contracts.

A data contract is the device maker's and operator's declaration, per device
model, of which fields the device may send **for which purpose**, at what
precision (as a chain of transforms), how often, under which legal basis
and for how long the hub may keep them. It is a versioned TOML file,
validated strictly when loaded: an unknown key, a transform that does not
fit its field, a missing retention period or an LDP release without bounds
is a :class:`~iotguard.errors.ConfigError` naming the offending path.

The same contract drives the device pipeline (what leaves the sensor), the
hub's ingest check (:func:`check_reading`), retention, and the plain
language notice.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import cbor2

from iotguard.errors import ConfigError, PolicyDenied

__all__ = [
    "CONTRACT_FORMAT",
    "MAX_CONTRACT_BYTES",
    "DataContract",
    "FieldSpec",
    "FieldType",
    "LegalBasis",
    "PurposeSpec",
    "TransformSpec",
    "check_reading",
    "parse_contract",
    "parse_duration",
]

#: Version of the contract file format this code reads.
CONTRACT_FORMAT = 1
#: Contract files larger than this are refused before parsing.
MAX_CONTRACT_BYTES = 256 * 1024
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]{0,31}$")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class LegalBasis(StrEnum):
    """Lawful bases for processing (GDPR Art. 6(1))."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"
    LEGITIMATE_INTERESTS = "legitimate_interests"


class FieldType(StrEnum):
    """What a sensor field holds."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    CATEGORY = "category"
    LOCATION = "location"  # (lat, lon) in degrees
    TIMESTAMP = "timestamp"  # seconds since the epoch
    IDENTIFIER = "identifier"  # text that identifies a person or thing


_NUMERIC = {FieldType.FLOAT, FieldType.INT}

# Which transform kinds apply to which field types, and their parameters
# (name -> (type, required)).
_TRANSFORMS: dict[str, tuple[frozenset[FieldType], dict[str, tuple[type, bool]]]] = {
    "round": (frozenset(_NUMERIC), {"decimals": (int, True)}),
    "bin": (frozenset(_NUMERIC), {"width": (float, True), "origin": (float, False)}),
    "topbottom": (frozenset(_NUMERIC), {"low": (float, True), "high": (float, True)}),
    "time_bucket": (frozenset({FieldType.TIMESTAMP}), {"seconds": (int, True)}),
    "location_round": (frozenset({FieldType.LOCATION}), {"decimals": (int, True)}),
    "geohash": (frozenset({FieldType.LOCATION}), {"precision": (int, True)}),
    "pseudonym": (frozenset({FieldType.IDENTIFIER}), {"length": (int, False)}),
    "ldp": (
        frozenset({FieldType.FLOAT, FieldType.INT, FieldType.BOOL, FieldType.CATEGORY}),
        {"epsilon": (float, True), "mechanism": (str, False)},
    ),
}
NUMERIC_MECHANISMS = ("auto", "duchi", "piecewise", "hybrid", "laplace")
CATEGORICAL_MECHANISMS = ("auto", "grr", "oue", "opendp_rr")
#: Largest epsilon one LDP transform may declare; beyond it the "noise" protects nothing.
MAX_LDP_EPSILON = 10.0


def parse_duration(text: str, *, where: str = "duration") -> timedelta:
    """Parse ``"90s"``, ``"5m"``, ``"12h"``, ``"30d"`` or ``"2w"``.

    Raises:
        ConfigError: not a positive duration in that form.
    """
    m = _DURATION_RE.match(text) if isinstance(text, str) else None
    if m is None or int(m.group(1)) <= 0:
        raise ConfigError(f"{where}: expected a positive duration like '30d', '12h', '5m', got {text!r}")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def _fmt_duration(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


@dataclass(frozen=True)
class FieldSpec:
    """One field a device model's sensors can produce."""

    name: str
    type: FieldType
    description: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransformSpec:
    """One step of a field's transform chain for one purpose."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        """Plain form, used in receipts and the configuration hash."""
        return {"kind": self.kind, **dict(self.params)}

    @property
    def epsilon(self) -> float:
        """Privacy loss of this step (0 for deterministic transforms)."""
        return float(self.params["epsilon"]) if self.kind == "ldp" else 0.0


@dataclass(frozen=True)
class PurposeSpec:
    """What a purpose may collect, why, how often, and for how long."""

    name: str
    description: str
    legal_basis: LegalBasis
    retention: timedelta
    min_interval: timedelta
    time_resolution: timedelta | None
    fields: Mapping[str, tuple[TransformSpec, ...]]

    @property
    def epsilon_per_reading(self) -> float:
        """Privacy loss of one reading for this purpose (sequential composition over fields)."""
        return sum(t.epsilon for chain in self.fields.values() for t in chain)


@dataclass(frozen=True)
class DataContract:
    """A validated, versioned data contract for one device model.

    Attributes:
        model: Device model the contract covers (``"thermo-1"``).
        version: Contract version; bumped on every change, carried in receipts.
        budget_epsilon: Privacy-loss budget per device per ``budget_period``.
        pseudonym_rotation: How often pseudonym keys rotate.
    """

    model: str
    version: int
    title: str
    controller: str
    contact: str
    withdraw: str
    budget_epsilon: float
    budget_period: timedelta
    pseudonym_rotation: timedelta
    fields: Mapping[str, FieldSpec]
    purposes: Mapping[str, PurposeSpec]

    def purpose(self, name: str) -> PurposeSpec:
        """The declared purpose ``name``.

        Raises:
            PolicyDenied: the contract declares no such purpose.
        """
        spec = self.purposes.get(name)
        if spec is None:
            raise PolicyDenied(f"purpose {name!r} is not declared in the {self.model} data contract")
        return spec

    def allowed_fields(self, purposes: Iterable[str]) -> frozenset[str]:
        """Fields that may leave the device for the given (consented) purposes.

        Undeclared purpose names contribute nothing (fail closed).
        """
        out: set[str] = set()
        for name in purposes:
            spec = self.purposes.get(name)
            if spec is not None:
                out.update(spec.fields)
        return frozenset(out)

    def to_dict(self) -> dict[str, Any]:
        """Normalised plain form (the basis of :meth:`digest`)."""
        return {
            "format": CONTRACT_FORMAT,
            "model": self.model,
            "version": self.version,
            "title": self.title,
            "controller": self.controller,
            "contact": self.contact,
            "withdraw": self.withdraw,
            "budget": {"epsilon": self.budget_epsilon, "period": _fmt_duration(self.budget_period)},
            "pseudonym_rotation": _fmt_duration(self.pseudonym_rotation),
            "fields": {
                f.name: {
                    "type": f.type.value,
                    "description": f.description,
                    "unit": f.unit,
                    "min": f.minimum,
                    "max": f.maximum,
                    "categories": list(f.categories),
                }
                for f in self.fields.values()
            },
            "purposes": {
                p.name: {
                    "description": p.description,
                    "legal_basis": p.legal_basis.value,
                    "retention": _fmt_duration(p.retention),
                    "min_interval": _fmt_duration(p.min_interval),
                    "time_resolution": _fmt_duration(p.time_resolution) if p.time_resolution else None,
                    "fields": {n: [t.to_dict() for t in chain] for n, chain in p.fields.items()},
                }
                for p in self.purposes.values()
            },
        }

    def digest(self) -> bytes:
        """SHA-256 of the canonical CBOR of :meth:`to_dict`."""
        return hashlib.sha256(cbor2.dumps(self.to_dict(), canonical=True)).digest()


# -- parsing -----------------------------------------------------------------


def _take(table: Mapping[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    missing = required - set(table)
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {sorted(missing)}")


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: expected non-empty text")
    return v


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(f"{where}: expected a finite number")
    return float(v)


def _name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not _NAME_RE.match(v):
        raise ConfigError(f"{where}: {v!r} is not a valid name (lowercase, digits, '_' or '-', <= 32)")
    return v


def _parse_field(name: str, t: Any) -> FieldSpec:
    where = f"fields.{name}"
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: expected a table")
    _take(t, {"type", "description", "unit", "min", "max", "categories"}, {"type", "description"}, where)
    try:
        ftype = FieldType(t["type"])
    except ValueError:
        raise ConfigError(
            f"{where}.type: {t['type']!r} is not one of {[x.value for x in FieldType]}"
        ) from None
    lo = _num(t["min"], f"{where}.min") if "min" in t else None
    hi = _num(t["max"], f"{where}.max") if "max" in t else None
    if (lo is None) != (hi is None) or (lo is not None and hi is not None and not lo < hi):
        raise ConfigError(f"{where}: min and max must be given together with min < max")
    if (lo is not None) and ftype not in _NUMERIC:
        raise ConfigError(f"{where}: min/max only apply to numeric fields")
    cats: tuple[str, ...] = ()
    if ftype is FieldType.CATEGORY:
        raw = t.get("categories")
        if not isinstance(raw, list) or len(raw) < 2 or len(raw) > 63:
            raise ConfigError(f"{where}.categories: a category field needs 2 to 63 categories")
        cats = tuple(_str(c, f"{where}.categories") for c in raw)
        if len(set(cats)) != len(cats):
            raise ConfigError(f"{where}.categories: duplicate category")
    elif "categories" in t:
        raise ConfigError(f"{where}: categories only apply to category fields")
    return FieldSpec(
        name, ftype, _str(t["description"], f"{where}.description"), str(t.get("unit", "")), lo, hi, cats
    )


def _parse_transform(raw: Any, fspec: FieldSpec, where: str) -> TransformSpec:
    if not isinstance(raw, dict) or "kind" not in raw:
        raise ConfigError(f"{where}: a transform is a table with a 'kind'")
    kind = raw["kind"]
    if kind not in _TRANSFORMS:
        raise ConfigError(f"{where}: unknown transform kind {kind!r} (one of {sorted(_TRANSFORMS)})")
    types, params = _TRANSFORMS[kind]
    if fspec.type not in types:
        raise ConfigError(
            f"{where}: transform {kind!r} does not apply to {fspec.type.value} field {fspec.name!r}"
        )
    body = {k: v for k, v in raw.items() if k != "kind"}
    _take(body, set(params), {k for k, (_, req) in params.items() if req}, where)
    out: dict[str, Any] = {}
    for key, value in body.items():
        ptype = params[key][0]
        if ptype is float:
            out[key] = _num(value, f"{where}.{key}")
        elif ptype is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}.{key}: expected an integer")
            out[key] = value
        else:
            out[key] = _str(value, f"{where}.{key}")
    if kind in ("round", "location_round") and not 0 <= out["decimals"] <= 8:
        raise ConfigError(f"{where}.decimals: must be 0..8")
    if kind == "bin" and out["width"] <= 0:
        raise ConfigError(f"{where}.width: must be positive")
    if kind == "topbottom" and not out["low"] < out["high"]:
        raise ConfigError(f"{where}: low must be below high")
    if kind == "time_bucket" and out["seconds"] <= 0:
        raise ConfigError(f"{where}.seconds: must be positive")
    if kind == "geohash" and not 1 <= out["precision"] <= 12:
        raise ConfigError(f"{where}.precision: must be 1..12")
    if kind == "pseudonym" and not 8 <= out.get("length", 16) <= 52:
        raise ConfigError(f"{where}.length: must be 8..52 base32 characters")
    if kind == "ldp":
        eps = out["epsilon"]
        if not 0 < eps <= MAX_LDP_EPSILON:
            raise ConfigError(f"{where}.epsilon: must be in (0, {MAX_LDP_EPSILON}]")
        mech = out.setdefault("mechanism", "auto")
        numeric = fspec.type in _NUMERIC
        allowed = NUMERIC_MECHANISMS if numeric else CATEGORICAL_MECHANISMS
        if mech not in allowed:
            raise ConfigError(f"{where}.mechanism: {mech!r} is not one of {list(allowed)}")
        if numeric and fspec.minimum is None:
            raise ConfigError(f"{where}: local DP on {fspec.name!r} needs min and max on the field")
    return TransformSpec(kind, MappingProxyType(out))


def _parse_purpose(name: str, t: Any, fields: Mapping[str, FieldSpec]) -> PurposeSpec:
    where = f"purposes.{name}"
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: expected a table")
    _take(
        t,
        {"description", "legal_basis", "retention", "min_interval", "time_resolution", "fields"},
        {"description", "legal_basis", "retention", "min_interval", "fields"},
        where,
    )
    try:
        basis = LegalBasis(t["legal_basis"])
    except ValueError:
        raise ConfigError(
            f"{where}.legal_basis: {t['legal_basis']!r} is not one of {[b.value for b in LegalBasis]}"
        ) from None
    raw_fields = t["fields"]
    if not isinstance(raw_fields, dict) or not raw_fields:
        raise ConfigError(f"{where}.fields: a purpose must declare at least one field")
    chains: dict[str, tuple[TransformSpec, ...]] = {}
    for fname, ft in raw_fields.items():
        fwhere = f"{where}.fields.{fname}"
        if fname not in fields:
            raise ConfigError(f"{fwhere}: field {fname!r} is not declared under [fields]")
        if not isinstance(ft, dict):
            raise ConfigError(f"{fwhere}: expected a table")
        _take(ft, {"transforms"}, set(), fwhere)
        raw_chain = ft.get("transforms", [])
        if not isinstance(raw_chain, list):
            raise ConfigError(f"{fwhere}.transforms: expected a list")
        chain = tuple(
            _parse_transform(x, fields[fname], f"{fwhere}.transforms[{i}]") for i, x in enumerate(raw_chain)
        )
        kinds = [c.kind for c in chain]
        if "ldp" in kinds and kinds.index("ldp") != len(kinds) - 1:
            raise ConfigError(f"{fwhere}: 'ldp' must be the last transform (its output is already private)")
        if kinds.count("ldp") > 1:
            raise ConfigError(f"{fwhere}: at most one 'ldp' transform per field")
        if fields[fname].type is FieldType.IDENTIFIER and "pseudonym" not in kinds:
            raise ConfigError(f"{fwhere}: identifier fields may only leave the device pseudonymised")
        chains[_name(fname, fwhere)] = chain
    tres = (
        parse_duration(t["time_resolution"], where=f"{where}.time_resolution")
        if "time_resolution" in t
        else None
    )
    return PurposeSpec(
        name=name,
        description=_str(t["description"], f"{where}.description"),
        legal_basis=basis,
        retention=parse_duration(t["retention"], where=f"{where}.retention"),
        min_interval=parse_duration(t["min_interval"], where=f"{where}.min_interval"),
        time_resolution=tres,
        fields=MappingProxyType(chains),
    )


def parse_contract(text: str, *, source: str = "<contract>") -> DataContract:
    """Parse and validate a contract from TOML text.

    Raises:
        ConfigError: the text is not valid TOML or breaks a contract rule; the
            message names the offending key path.
    """
    if len(text.encode()) > MAX_CONTRACT_BYTES:
        raise ConfigError(f"{source}: contract exceeds {MAX_CONTRACT_BYTES} bytes")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    _take(
        doc,
        {"contract", "budget", "fields", "purposes"},
        {"contract", "budget", "fields", "purposes"},
        source,
    )
    head = doc["contract"]
    if not isinstance(head, dict):
        raise ConfigError(f"{source}: [contract] must be a table")
    _take(
        head,
        {"format", "model", "version", "title", "controller", "contact", "withdraw", "pseudonym_rotation"},
        {"format", "model", "version", "title", "controller", "contact", "withdraw"},
        "contract",
    )
    if head["format"] != CONTRACT_FORMAT:
        raise ConfigError(
            f"contract.format: this iotguard reads format {CONTRACT_FORMAT}, got {head['format']!r}"
        )
    version = head["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError("contract.version: expected a positive integer")
    budget = doc["budget"]
    if not isinstance(budget, dict):
        raise ConfigError("budget: expected a table")
    _take(budget, {"epsilon", "period"}, {"epsilon", "period"}, "budget")
    eps = _num(budget["epsilon"], "budget.epsilon")
    if eps < 0:
        raise ConfigError("budget.epsilon: must not be negative")
    raw_fields = doc["fields"]
    raw_purposes = doc["purposes"]
    if not isinstance(raw_fields, dict) or not raw_fields:
        raise ConfigError("fields: declare at least one field")
    if not isinstance(raw_purposes, dict) or not raw_purposes:
        raise ConfigError("purposes: declare at least one purpose")
    fields = {_name(n, f"fields.{n}"): _parse_field(n, t) for n, t in raw_fields.items()}
    purposes = {_name(n, f"purposes.{n}"): _parse_purpose(n, t, fields) for n, t in raw_purposes.items()}
    for p in purposes.values():
        if p.epsilon_per_reading > eps:
            raise ConfigError(
                f"purposes.{p.name}: one reading spends epsilon {p.epsilon_per_reading:g}, "
                f"more than the whole budget.epsilon {eps:g}"
            )
    return DataContract(
        model=_str(head["model"], "contract.model"),
        version=version,
        title=_str(head["title"], "contract.title"),
        controller=_str(head["controller"], "contract.controller"),
        contact=_str(head["contact"], "contract.contact"),
        withdraw=_str(head["withdraw"], "contract.withdraw"),
        budget_epsilon=eps,
        budget_period=parse_duration(budget["period"], where="budget.period"),
        pseudonym_rotation=parse_duration(
            head.get("pseudonym_rotation", "30d"), where="contract.pseudonym_rotation"
        ),
        fields=MappingProxyType(fields),
        purposes=MappingProxyType(purposes),
    )


def _type_ok(ftype: FieldType, value: Any) -> bool:
    if ftype is FieldType.BOOL:
        return isinstance(value, bool | int) and not isinstance(value, float)
    if ftype in (FieldType.CATEGORY, FieldType.IDENTIFIER, FieldType.LOCATION):
        return isinstance(value, str | int) and not isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_reading(contract: DataContract, purpose: str | None, fields: Mapping[str, Any]) -> None:
    """Hub-side check of a reading against the device model's data contract.

    Every field must be declared for ``purpose`` and carry a value of the
    declared kind (after the device's transforms: a location is text, a
    categorical LDP report of the OUE mechanism is an integer bit mask).

    Raises:
        PolicyDenied: no purpose, an undeclared purpose, an undeclared field
            for that purpose, or a value of the wrong kind.
    """
    if purpose is None:
        raise PolicyDenied(f"reading from a {contract.model} device declares no purpose")
    spec = contract.purpose(purpose)
    undeclared = sorted(set(fields) - set(spec.fields))
    if undeclared:
        raise PolicyDenied(f"field(s) {undeclared} not declared for purpose {purpose!r} of {contract.model}")
    for name, value in fields.items():
        if not _type_ok(contract.fields[name].type, value):
            raise PolicyDenied(f"field {name!r} does not hold a {contract.fields[name].type.value} value")
