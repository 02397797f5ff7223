"""The device-side privacy pipeline: what a sensor reading becomes before it is sealed.

For one reading and one purpose the pipeline, in this order:

1. checks consent for the purpose at the current time (withdrawn or never
   granted: :class:`~iotguard.errors.ConsentError`, nothing leaves);
2. enforces the purpose's maximum frequency;
3. charges the privacy-loss ledger for the local-DP releases it is about to
   make (over budget: :class:`~iotguard.errors.BudgetExhausted`, nothing
   leaves);
4. keeps only the fields the contract declares for the purpose (every other
   field the sensor produced is dropped, and named in the receipt) and runs
   each through its transform chain: generalisation, pseudonymisation,
   local differential privacy;
5. coarsens the timestamp to the purpose's time resolution;
6. returns the fields with a :class:`~iotguard.privacy.receipt.ReceiptEntry`.

The agent calls :meth:`PrivacyPipeline.process` (or :meth:`process_all`)
for each reading and adds the entries to a
:class:`~iotguard.privacy.receipt.ReceiptBuilder` per batch.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import cbor2

from iotguard.clock import Clock
from iotguard.errors import (
    BudgetExhausted,
    ConsentError,
    IotGuardError,
    MalformedError,
    PolicyDenied,
)
from iotguard.privacy import generalise as g
from iotguard.privacy.consent import ConsentAck, ConsentConfig, ConsentState
from iotguard.privacy.contract import DataContract, FieldSpec, FieldType, TransformSpec
from iotguard.privacy.ldp import (
    BoundedNumeric,
    CategoricalMechanism,
    UniformSource,
    choose_categorical,
    choose_numeric,
)
from iotguard.privacy.ledger import PrivacyLossLedger
from iotguard.privacy.pseudonym import PseudonymKeyring
from iotguard.privacy.receipt import ReceiptEntry, reading_digest

__all__ = ["PIPELINE_VERSION", "PipelineOutput", "PrivacyPipeline", "ProcessedReading"]

#: Version of the pipeline's semantics, part of the configuration hash.
PIPELINE_VERSION = 1
FieldValue = int | float | str | bool
_Step = Callable[[Any, "_Ctx"], Any]


@dataclass(frozen=True)
class ProcessedReading:
    """A reading after the pipeline: only what may leave the device for ``purpose``."""

    purpose: str
    ts_ms: int
    fields: Mapping[str, FieldValue]
    receipt_entry: ReceiptEntry


@dataclass(frozen=True)
class PipelineOutput:
    """The result of :meth:`PrivacyPipeline.process_all`.

    Attributes:
        readings: One processed reading per purpose that may collect now.
        refused: Purposes that did not collect, with the reason code
            (``no_consent``, ``budget_exhausted``, ``policy_denied``).
    """

    readings: tuple[ProcessedReading, ...]
    refused: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class _Ctx:
    purpose: str
    now: datetime
    rng: UniformSource


@dataclass(frozen=True)
class _CompiledField:
    spec: FieldSpec
    deterministic: tuple[_Step, ...]
    ldp: _Step | None
    output: _Step
    kinds: tuple[str, ...]
    epsilon: float


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise MalformedError(f"sensor field {name!r} is not a finite number")
    return float(v)


def _category_index(spec: FieldSpec, v: Any) -> int:
    if spec.type is FieldType.BOOL:
        if not isinstance(v, bool | int) or v not in (0, 1):
            raise MalformedError(f"sensor field {spec.name!r} is not a boolean")
        return int(bool(v))
    if v not in spec.categories:
        raise MalformedError(f"sensor field {spec.name!r} holds an undeclared category")
    return spec.categories.index(v)


class PrivacyPipeline:
    """Minimise, generalise, pseudonymise and privatise readings per purpose.

    Args:
        contract: The device model's data contract.
        consent: The data subject's consent state the device enforces.
        keys: Pseudonym keyring (see :func:`~iotguard.privacy.keyring_from_keystore`).
        ledger: The device's privacy-loss ledger.
        clock: Time source; consent, frequency, budget periods and pseudonym
            periods are all evaluated at ``clock.now()``.
        device_id: The device's id (ledger and receipts).
        rng: Uniform source for local DP; ``None`` uses the OS CSPRNG. Only
            tests and simulations should pass a seeded generator.

    Raises:
        ConfigError: a transform of the contract cannot be built.
    """

    def __init__(
        self,
        contract: DataContract,
        consent: ConsentState,
        keys: PseudonymKeyring,
        ledger: PrivacyLossLedger,
        clock: Clock,
        *,
        device_id: str,
        rng: UniformSource | None = None,
    ) -> None:
        self.contract = contract
        self._consent = consent
        self._keys = keys
        self._ledger = ledger
        self._clock = clock
        self.device_id = device_id
        self._rng: UniformSource = rng if rng is not None else secrets.SystemRandom()
        self._lock = threading.Lock()
        #: Monotonic time of each purpose's last release: a jump of the wall clock neither blocks
        #: releases (forward, then corrected) nor allows extra ones (backwards).
        self._last: dict[str, float] = {}
        self._compiled: dict[str, dict[str, _CompiledField]] = {}
        resolved: dict[str, dict[str, list[str]]] = {}
        for pname, pspec in contract.purposes.items():
            fields: dict[str, _CompiledField] = {}
            for fname, chain in pspec.fields.items():
                fields[fname] = self._compile(contract.fields[fname], chain)
            self._compiled[pname] = fields
            resolved[pname] = {f: list(c.kinds) for f, c in fields.items()}
        config = {
            "pipeline_version": PIPELINE_VERSION,
            "contract": contract.to_dict(),
            "resolved": resolved,
            "rng": "seeded" if rng is not None else "os-csprng",
        }
        #: SHA-256 of the pipeline's configuration (carried in receipts and attestation evidence).
        self.config_sha256 = hashlib.sha256(cbor2.dumps(config, canonical=True)).digest()

    # -- consent -----------------------------------------------------------

    @property
    def consent(self) -> ConsentState:
        """The consent state in force."""
        return self._consent

    def set_consent(self, state: ConsentState) -> None:
        """Replace the consent state; takes effect for the very next reading."""
        with self._lock:
            self._consent = state

    def apply_consent_config(self, config: ConsentConfig) -> ConsentAck:
        """Apply a consent configuration pushed by the hub and acknowledge it.

        Raises:
            MalformedError: the configuration is for another device or subject.
            RollbackError: it is not newer than the state in force.
        """
        with self._lock:
            self._consent = config.apply_to(self._consent, self.device_id)
        return config.acknowledge(self._clock.now())

    # -- compilation -------------------------------------------------------

    def _compile(self, spec: FieldSpec, chain: tuple[TransformSpec, ...]) -> _CompiledField:
        steps: list[_Step] = [self._input_step(spec)]
        ldp: _Step | None = None
        kinds: list[str] = []
        for t in chain:
            step, kind = self._step(spec, t)
            kinds.append(kind)
            if t.kind == "ldp":
                ldp = step  # the parser guarantees it is the last step
            else:
                steps.append(step)
        eps = sum(t.epsilon for t in chain)
        return _CompiledField(
            spec, tuple(steps), ldp, self._output_step(spec, chain), tuple(kinds) or ("keep",), eps
        )

    @staticmethod
    def _input_step(spec: FieldSpec) -> _Step:
        name = spec.name
        if spec.type in (FieldType.FLOAT, FieldType.INT, FieldType.TIMESTAMP):
            return lambda v, _c: _number(name, v)
        if spec.type is FieldType.LOCATION:
            return lambda v, _c: g.parse_location(v)
        if spec.type is FieldType.BOOL:
            return lambda v, _c: bool(_category_index(spec, v))
        if spec.type is FieldType.CATEGORY:

            def category(v: Any, _c: _Ctx) -> Any:
                _category_index(spec, v)
                return v

            return category

        def identifier(v: Any, _c: _Ctx) -> Any:
            if not isinstance(v, str) or not 0 < len(v) <= 256:
                raise MalformedError(f"sensor field {name!r} is not short text")
            return v

        return identifier

    @staticmethod
    def _output_step(spec: FieldSpec, chain: tuple[TransformSpec, ...]) -> _Step:
        if spec.type is FieldType.LOCATION:

            def location(v: Any, _c: _Ctx) -> Any:
                return v if isinstance(v, str) else f"{v[0]!r},{v[1]!r}"

            return location
        if spec.type is FieldType.INT and not any(t.kind in ("ldp", "bin") for t in chain):
            return lambda v, _c: round(v)
        return lambda v, _c: v

    def _step(self, spec: FieldSpec, t: TransformSpec) -> tuple[_Step, str]:
        p = t.params
        if t.kind == "round":
            d = int(p["decimals"])
            return (lambda v, _c: g.round_value(v, d)), f"round:{d}"
        if t.kind == "bin":
            w, o = float(p["width"]), float(p.get("origin", 0.0))
            return (lambda v, _c: g.bin_value(v, w, o)), f"bin:{w:g}"
        if t.kind == "topbottom":
            lo, hi = float(p["low"]), float(p["high"])
            return (lambda v, _c: g.top_bottom_code(v, lo, hi)), f"topbottom:{lo:g}..{hi:g}"
        if t.kind == "time_bucket":
            s = int(p["seconds"])
            return (lambda v, _c: g.bucket_time(v, s)), f"time_bucket:{s}"
        if t.kind == "location_round":
            d = int(p["decimals"])
            return (lambda v, _c: g.round_location(v[0], v[1], d)), f"location_round:{d}"
        if t.kind == "geohash":
            n = int(p["precision"])
            return (lambda v, _c: g.geohash(v[0], v[1], n)), f"geohash:{n}"
        if t.kind == "pseudonym":
            length = int(p.get("length", 16))
            keys = self._keys
            return (lambda v, c: keys.pseudonym(v, c.purpose, c.now, length=length)), "pseudonym"
        # ldp (validated by the contract parser)
        eps, mech = float(p["epsilon"]), str(p["mechanism"])
        if spec.type in (FieldType.FLOAT, FieldType.INT):
            assert spec.minimum is not None and spec.maximum is not None
            bounded = BoundedNumeric(choose_numeric(eps, mech), spec.minimum, spec.maximum)
            return (lambda v, c: bounded.privatise(v, c.rng)), f"ldp:{bounded.mechanism.name}:{eps:g}"
        k = 2 if spec.type is FieldType.BOOL else len(spec.categories)
        cm: CategoricalMechanism = choose_categorical(eps, k, mech)
        if spec.type is FieldType.BOOL:
            return (lambda v, c: bool(cm.privatise(int(v), c.rng))), f"ldp:{cm.name}:{eps:g}"
        cats = spec.categories
        if cm.name == "oue":
            return (lambda v, c: cm.privatise(cats.index(v), c.rng)), f"ldp:{cm.name}:{eps:g}"
        return (lambda v, c: cats[cm.privatise(cats.index(v), c.rng)]), f"ldp:{cm.name}:{eps:g}"

    def mechanism_for(self, purpose: str, field_name: str) -> str:
        """The resolved transform chain of a field for a purpose, e.g. ``"ldp:hybrid:1"``.

        Raises:
            PolicyDenied: the purpose or field is not declared.
        """
        self.contract.purpose(purpose)
        compiled = self._compiled[purpose].get(field_name)
        if compiled is None:
            raise PolicyDenied(f"field {field_name!r} is not declared for {purpose!r}")
        return ",".join(compiled.kinds)

    # -- processing --------------------------------------------------------

    def process(
        self, reading: Mapping[str, Any], purpose: str, *, ts_ms: int | None = None
    ) -> ProcessedReading:
        """Run one sensor reading through the pipeline for one purpose.

        Args:
            reading: Everything the sensor produced, field name to value.
            purpose: The purpose this release is for.
            ts_ms: Reading time in ms since the epoch (default: the clock's now).

        Raises:
            PolicyDenied: undeclared purpose, or readings more frequent than
                the purpose's ``min_interval``.
            ConsentError: the subject has not consented to, or withdrew, ``purpose``.
            BudgetExhausted: the release would exceed the period's privacy budget.
            MalformedError: a declared field holds a value of the wrong kind.
        """
        spec = self.contract.purpose(purpose)
        compiled = self._compiled[purpose]
        with self._lock:
            now = self._clock.now()
            self._consent.require(self.contract, purpose, now)
            last = self._last.get(purpose)
            mono = self._clock.monotonic()
            if last is not None and mono - last < spec.min_interval.total_seconds():
                raise PolicyDenied(f"purpose {purpose!r} allows one reading per {spec.min_interval}")
            present = [f for f in compiled if f in reading and reading[f] is not None]
            ctx = _Ctx(purpose, now, self._rng)
            # Transform before charging so a malformed value costs no budget,
            # but publish nothing unless the charge succeeds.
            staged: dict[str, Any] = {}
            for name in present:
                value = reading[name]
                for step in compiled[name].deterministic:
                    value = step(value, ctx)
                staged[name] = value
            epsilon = sum(compiled[n].epsilon for n in present)
            spend = self._ledger.charge(self.device_id, epsilon, purpose, now)
            out: dict[str, FieldValue] = {}
            for name in present:
                c = compiled[name]
                value = staged[name]
                if c.ldp is not None:
                    value = c.ldp(value, ctx)
                out[name] = c.output(value, ctx)
            self._last[purpose] = mono
        ts = int(now.timestamp() * 1000) if ts_ms is None else int(ts_ms)
        if spec.time_resolution is not None:
            res_ms = int(spec.time_resolution.total_seconds() * 1000)
            ts = ts - ts % res_ms
        entry = ReceiptEntry(
            purpose=purpose,
            ts_ms=ts,
            transforms=MappingProxyType({n: compiled[n].kinds for n in present}),
            dropped=tuple(sorted(set(reading) - set(present))),
            epsilon=epsilon,
            period=spend.period,
            period_total=spend.total,
            digest=reading_digest(ts, out, purpose),
        )
        return ProcessedReading(purpose, ts, MappingProxyType(out), entry)

    def process_all(self, reading: Mapping[str, Any], *, ts_ms: int | None = None) -> PipelineOutput:
        """Process a reading for every purpose that may collect now.

        Purposes refused by consent, frequency or budget are skipped and
        reported in :attr:`PipelineOutput.refused`; a malformed reading is
        an error for all of them.

        Raises:
            MalformedError: a declared field holds a value of the wrong kind.
        """
        outs: list[ProcessedReading] = []
        refused: dict[str, str] = {}
        for purpose in sorted(self.contract.purposes):
            try:
                outs.append(self.process(reading, purpose, ts_ms=ts_ms))
            except (ConsentError, BudgetExhausted, PolicyDenied) as exc:
                refused[purpose] = exc.code
            except MalformedError:
                raise
            except IotGuardError as exc:
                refused[purpose] = exc.code
        return PipelineOutput(tuple(outs), MappingProxyType(refused))
