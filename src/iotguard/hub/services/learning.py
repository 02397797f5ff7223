"""The hub's federated training runs: enrol devices, hand out tasks, take updates, step the model.

A run holds its global model in the :class:`~iotguard.hub.stores.learning.LearningRunStore`.
A device asks for its :meth:`LearningService.task` (the current model and the
round's settings), trains locally (:class:`iotguard.learn.Participant`) and
:meth:`LearningService.submit`\\ s the encoded update. The strategies of
:mod:`iotguard.learn.strategy` move the model: FedAvg closes a round when
every enrolled device answered, or at the deadline with at least
``min_participants`` (:meth:`LearningService.tick`); FedBuff steps every
``buffer_size`` updates, weighting stale ones down. Each step is one
compare-and-swap in the store, so hub processes sharing a database never
apply a round twice. When the run reaches its planned versions it completes
and the model is published, signed, through
:class:`~iotguard.hub.services.models.ModelService`.

Only devices whose posture is affirming (trust tier ``verified``, not
quarantined) are enrolled, get tasks or have updates accepted
(``not_eligible``). Updates are decoded and norm-checked on arrival
(``update_malformed``, ``update_dims``, ``update_norm_exceeded``); a second
update from one device for one version is refused (``update_duplicate``).

A ``secure`` run (FedAvg or FedBuff, mean) takes no plaintext updates: each round is a
secure-aggregation round among the selected devices
(:class:`~iotguard.hub.services.aggregation.SecureAggregationService`, over
signed ``aggregate`` requests), each device clips, rounds and, with DP
(``epsilon`` > 0), noises its update in integers on the device
(:mod:`iotguard.learn.distributed`), and the hub learns only the noised sum.
Which aggregation round carries a version is bound in the shared run store
(:class:`~iotguard.hub.stores.learning.SecureRoundBinding`, compare-and-swap against the run's version), so
every hub process hands out the same round, a failed round is replaced once and its sum is applied once. Only
the process whose bind won then charges the round's share of the run's epsilon, before the round starts, to
the data subject of every member in the one per-subject ledger (``federated``, all or nothing), at most once
per subject under the version's ``once`` key: a failed round released no sum, so its replacement is not
charged again (ADR 1304). A device whose subject cannot pay is not selected; one that cannot cover the whole
run is not enrolled. A secure FedBuff run binds a round when ``buffer_size`` devices are ready (ADR 1307,
:mod:`iotguard.hub.services.learning_buffer`): stale updates are scaled down on the devices by the weight the
hub hands them, and a subject is charged for the rounds it took part in.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from iotguard.analytics.ledger import SubjectLedger
from iotguard.analytics.secagg import AggregationError
from iotguard.analytics.secagg_round import new_round_id
from iotguard.audit import AuditEvent, AuditSink
from iotguard.clock import Clock
from iotguard.errors import BudgetExhausted, ConfigError, IntegrityError, MalformedError, PolicyDenied
from iotguard.hub.services.aggregation import SecureAggregationService
from iotguard.hub.services.learning_buffer import READY, buffer_members, participations, ready_markers, staleness_weight
from iotguard.hub.services.learning_settings import RunSettings
from iotguard.hub.services.models import ModelService
from iotguard.hub.stores.learning import LearningRunStore, PendingUpdate, RunRecord, SecureRoundBinding, next_row
from iotguard.learn.client import RoundConfig, Update
from iotguard.learn.compress import SCHEMES, check_compression, decode_update, negotiate
from iotguard.learn.distributed import SecureRoundPlan, plan_round
from iotguard.learn.model import Model, NDArrays, flatten, unflatten
from iotguard.learn.robust import check_norm
from iotguard.learn.strategy import FedAvg, FedBuff
from iotguard.policy.posture import PostureStore

__all__ = ["LearningService", "RunSettings", "Task", "affirming_posture"]

_RUN_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_COMMIT_ATTEMPTS = 5
MAX_DEVICES = 10_000
#: Why a secure round fails before the hub could unmask any sum (no masked vectors yet, or a mask whose secret
#: has fewer than ``t`` shares): its replacement for the same version is not charged again. Any other failure
#: is counted as a release and the replacement is charged again (conservative; ADR 1304).
NOTHING_RELEASED = frozenset({"too_few_devices", "threshold_invalid", "too_few_survivors", "too_few_shares"})


def _parameters(run: RunRecord, model: Model) -> NDArrays:
    return unflatten(np.frombuffer(run.parameters, dtype="<f8").astype(np.float64), model.initial(0))


def _plan(bound: SecureRoundBinding, settings: RunSettings) -> SecureRoundPlan:
    """A bound round's encoding plan, recomputed from the run's settings, its member count and threshold."""
    if settings.clip_norm is None:
        raise ConfigError("a secure run needs a clip norm")
    return plan_round(settings.model().size(), settings.clip_norm, settings.noise_multiplier, len(bound.members),
                      bound.threshold, settings.secure_fraction)


def _buffered(settings: RunSettings) -> bool:
    """A secure FedBuff run: devices report ready, rounds are bound per buffer of ready devices (ADR 1307)."""
    return settings.secure and settings.strategy == "fedbuff"


def affirming_posture(postures: PostureStore) -> Callable[[str], bool]:
    """Participation gate: the device's posture is known, ``verified`` and not quarantined."""
    def gate(device_id: str) -> bool:
        p = postures.get(device_id)
        return p is not None and p.trust_tier == "verified" and not p.quarantined
    return gate


@dataclass(frozen=True)
class Task:
    """What a device trains next: the model version and the round's settings."""

    run_id: str
    version: int
    parameters: NDArrays
    round_config: RoundConfig
    secure_round: str = ""
    plan: SecureRoundPlan | None = None
    #: Secure FedBuff: the device trains on ``version``, then reports ready; ``buffering``: its ready marker waits
    #: for a buffer; a member of the bound round is told the base its marker names and the staleness weight.
    buffered: bool = False
    buffering: bool = False
    base_version: int = -1
    staleness_weight: float = 1.0


class LearningService:
    """Starts, advances, stops and reports federated training runs."""

    def __init__(self, store: LearningRunStore, models: ModelService, audit: AuditSink, clock: Clock, *,
                 eligible: Callable[[str], bool]) -> None:
        self._store, self._models, self._audit, self._clock = store, models, audit, clock
        self._eligible = eligible
        self._aggregation: SecureAggregationService | None = None
        self._ledger: SubjectLedger | None = None
        self._subject_of: Callable[[str], str | None] = lambda _d: None

    def attach_privacy(self, aggregation: SecureAggregationService | None, ledger: SubjectLedger | None,
                       subject_of: Callable[[str], str | None]) -> None:
        """Give secure runs their aggregation rounds and DP runs the per-subject ledger (``build_hub_services``)."""
        self._aggregation, self._ledger, self._subject_of = aggregation, ledger, subject_of

    def subject(self, device_id: str) -> str:
        """The data subject charged for a device (the device itself when no subject is linked)."""
        return self._subject_of(device_id) or device_id

    def _run(self, run_id: str) -> tuple[RunRecord, RunSettings]:
        run = self._store.get(run_id)
        if run is None:
            raise ConfigError(f"no training run {run_id}", code="unknown_run")
        return run, RunSettings.from_json(run.config)

    def start(self, run_id: str, settings: RunSettings, devices: Sequence[str], *, actor: str) -> RunRecord:
        """Enrol the eligible ``devices`` and publish version 0 of the model to them.

        Raises:
            ConfigError: bad id, or fewer eligible devices than ``min_participants``.
            IntegrityError: the run id exists.
        """
        if not _RUN_ID.fullmatch(run_id) or len(devices) > MAX_DEVICES:
            raise ConfigError("run id must match [a-z0-9][a-z0-9._-]{0,63}; at most 10000 devices")
        now = self._clock.now()
        settings = settings.calibrated()
        enrolled = tuple(sorted(d for d in set(devices) if self._eligible(d)))
        if settings.secure and self._aggregation is None:
            raise ConfigError("this hub has no secure aggregation service")
        if settings.epsilon > 0:
            if self._ledger is None:
                raise ConfigError("this hub has no privacy ledger")
            total, ledger = settings.dp().epsilon_after(settings.rounds), self._ledger
            enrolled = tuple(d for d in enrolled if ledger.remaining(self.subject(d), now) >= total)
        need = max(settings.min_participants, settings.buffer_size if _buffered(settings) else 0)
        if len(enrolled) < need:
            raise ConfigError(f"{len(enrolled)} eligible devices, the run needs {need}")
        model = settings.model()
        run = RunRecord(run_id, asdict(settings) | {"fit": dict(settings.fit)}, enrolled, "running", 0,
                        flatten(model.initial(0)).astype("<f8").tobytes(), now, actor)
        self._store.create(run)
        self._audit.record(AuditEvent("learning.started", now, actor, run_id,
                                      {"model": settings.model_name, "strategy": settings.strategy,
                                       "devices": len(enrolled), "skipped": len(set(devices)) - len(enrolled),
                                       "secure": settings.secure, "epsilon": settings.epsilon,
                                       "noise_multiplier": settings.noise_multiplier}))
        return run

    def _check_device(self, run: RunRecord, device_id: str) -> None:
        if run.status != "running":
            raise PolicyDenied(f"run {run.run_id} is {run.status}", code="run_not_running")
        if device_id not in run.devices or not self._eligible(device_id):
            raise PolicyDenied(f"device {device_id} does not take part in {run.run_id}", code="not_eligible")

    def task(self, run_id: str, device_id: str, accepts: Collection[str] | None = None,
             max_update_bytes: int = 0, ready: int = 0) -> Task:
        """The current model and round settings for ``device_id``, with the compression negotiated from what it
        ``accepts`` (``None``: every scheme) and its ``max_update_bytes`` (0: no limit; plaintext runs only).
        In a secure FedBuff run ``ready`` (base version + 1; 0: none) says the device holds an update trained on
        that base (ADR 1307).

        Raises:
            PolicyDenied: ``run_not_running``, ``not_eligible`` or ``compression_unsupported``.
            MalformedError: ``update_stale`` (the ready update's base is too old: train again),
                ``update_malformed`` (``ready`` outside a secure FedBuff run, or past the run's version).
        """
        run, settings = self._run(run_id)
        self._check_device(run, device_id)
        if ready and not _buffered(settings):
            raise MalformedError("ready is for secure FedBuff runs only", code="update_malformed")
        if not settings.secure:
            chosen = negotiate(settings.offer(run.version), settings.model().size(), accepts, max_update_bytes)
            return Task(run_id, run.version, _parameters(run, settings.model()),
                        settings.round_config(run.version, chosen))
        run = self.tick(run_id)  # apply a finished secure round first
        self._check_device(run, device_id)
        if _buffered(settings):
            return self._buffered_task(run, settings, device_id, ready)
        bound = self._secure_round(run, settings)
        if device_id not in bound.members:
            raise PolicyDenied(f"device {device_id} is not selected for this round", code="not_selected")
        return Task(run_id, run.version, _parameters(run, settings.model()), settings.round_config(run.version),
                    bound.round_id, _plan(bound, settings))

    def _buffered_task(self, run: RunRecord, settings: RunSettings, device_id: str, ready: int) -> Task:
        """A secure FedBuff device's task: the model to train; once it is ready, its marker is kept (shared
        store) and it waits (``buffering``) until a round of ``buffer_size`` ready devices takes it in."""
        task = Task(run.run_id, run.version, _parameters(run, settings.model()), settings.round_config(run.version),
                    buffered=True)
        bound = self._store.secure_round(run.run_id, run.version)
        if bound is None or device_id not in bound.members or self._failure(bound, settings) is not None:
            base = ready - 1
            if ready and not 0 <= run.version - base <= settings.fedbuff().max_staleness:
                self._store.withdraw(run.run_id, device_id)
                raise MalformedError(f"update on version {base}, run is at {run.version}",
                                     code="update_stale" if base <= run.version else "update_malformed")
            mine = [p.base_version for p in self._store.pending(run.run_id) if p.device_id == device_id]
            if mine != ([base] if ready else []):  # a new base, or the device holds no update any more
                self._store.withdraw(run.run_id, device_id)
                if ready:
                    self._store.add_update(run.run_id, PendingUpdate(device_id, base, 1, READY, self._clock.now()))
            if not ready:
                return task
            try:
                bound = self._secure_round(run, settings)
            except PolicyDenied as exc:
                if exc.code not in ("too_few_participants", "budget_exhausted"):
                    raise
                return replace(task, buffering=True)  # fewer than buffer_size ready: wait, nobody is blocked
            if device_id not in bound.members:
                return replace(task, buffering=True)
        marker = next((p for p in self._store.pending(run.run_id) if p.device_id == device_id), None)
        if marker is None:
            return task
        weight = staleness_weight(bound.version, marker.base_version, settings.fedbuff().staleness_exponent)
        return replace(task, secure_round=bound.round_id, plan=_plan(bound, settings),
                       base_version=marker.base_version, staleness_weight=weight)

    def _one_per_subject(self, devices: Sequence[str], version: int) -> list[str]:
        """One device per data subject (taking turns by version), so one subject moves the sum by at most ``C``."""
        by_subject: dict[str, list[str]] = {}
        for d in sorted(devices):
            by_subject.setdefault(self.subject(d), []).append(d)
        return sorted(ds[version % len(ds)] for ds in by_subject.values())

    def _secure_round(self, run: RunRecord, settings: RunSettings) -> SecureRoundBinding:
        """The round bound to the run's current version; a new one (charged, bound) if none is, or it failed.

        Raises:
            PolicyDenied: ``too_few_participants``, ``budget_exhausted``, ``run_not_running``.
        """
        for _ in range(_COMMIT_ATTEMPTS):
            bound = self._store.secure_round(run.run_id, run.version)
            replaces, attempt, key = "", 1, f"learn:{run.run_id}:v{run.version}"
            if bound is not None:
                reason = self._failure(bound, settings)
                if reason is None:
                    return bound
                replaces, attempt = bound.round_id, bound.attempt + 1
                key = bound.charge_key if reason in NOTHING_RELEASED else f"{key}:a{attempt}"
            started = self._start_round(run, settings, replaces, attempt, key)
            if started is not None:
                return started
            run = self._run(run.run_id)[0]  # another process bound the version first, or the run moved on
            if run.status != "running":
                raise PolicyDenied(f"run {run.run_id} is {run.status}", code="run_not_running")
        raise PolicyDenied(f"run {run.run_id}'s round kept changing", code="too_few_participants")

    def _failure(self, bound: SecureRoundBinding, settings: RunSettings) -> str | None:
        """Why the bound round failed, or None while it runs or is done (unknown and younger than a phase
        deadline: its binder is still starting it)."""
        if self._aggregation is None:
            raise ConfigError("a secure run needs the aggregation service")
        try:
            out = self._aggregation.status(bound.round_id, actor="learning")
        except AggregationError as exc:
            if exc.reason != "round_unknown":
                raise
            young = self._clock.now() - bound.bound_at < timedelta(seconds=settings.deadline_s)
            return None if young else "round_unknown"  # never started (its binder stopped), or forgotten
        return str(out.get("reason") or "failed") if out["phase"] == "failed" else None

    def _start_round(self, run: RunRecord, settings: RunSettings, replaces: str, attempt: int,
                     key: str) -> SecureRoundBinding | None:
        """Select, bind, charge (once per subject under ``key``) and start a round; None if the bind lost.

        Only the process whose bind won charges, so a process that raced with another member set charges no
        subject for a round it did not bind. A charge refused after the bind (another release spent the budget
        in between) replaces the never-started round at once under the same key: nothing was released.
        """
        aggregation, clip_norm = self._aggregation, settings.clip_norm
        if aggregation is None or clip_norm is None or (settings.epsilon > 0 and self._ledger is None):
            raise ConfigError("a secure run needs the aggregation service, a clip norm and (with DP) the ledger")
        for _ in range(_COMMIT_ATTEMPTS):
            now = self._clock.now()
            members, increments = self._members(run, settings, key)
            need = settings.buffer_size if _buffered(settings) else settings.min_participants
            if len(members) < need:
                raise PolicyDenied(f"{len(members)} devices can take part, the round needs {need}",
                                   code="too_few_participants")
            threshold = min(len(members), max(settings.min_participants, len(members) // 2 + 1))
            bound = SecureRoundBinding(run.run_id, run.version, new_round_id().hex(), tuple(sorted(members)),
                                       threshold, attempt, key, now)
            if not self._store.bind_secure_round(bound, replaces):
                return None
            try:
                self._charge(run, increments, key, now)
            except BudgetExhausted:
                replaces, attempt = bound.round_id, attempt + 1
                continue
            aggregation.start(list(bound.members), _plan(bound, settings).dims, threshold=threshold,
                              phase_timeout_s=settings.deadline_s, actor=run.started_by, round_id=bound.round_id)
            self._audit.record(AuditEvent("learning.secure_round", now, run.started_by, run.run_id,
                                          {"version": run.version, "round": bound.round_id, "attempt": attempt,
                                           "replaces": replaces, "devices": len(members), "threshold": threshold,
                                           "epsilon_charged": max(increments.values(), default=0.0),
                                           "charge_key": key}))
            return bound
        raise PolicyDenied(f"run {run.run_id}'s round members kept exhausting their budgets",
                           code="budget_exhausted")

    def _charge(self, run: RunRecord, increments: dict[str, float], key: str, now: datetime) -> None:
        """Charge each member's subject its increment under ``key``, one all-or-none charge per distinct increment
        (FedAvg: one for all; FedBuff: by participation count); raises BudgetExhausted if a subject cannot pay."""
        for increment in sorted({i for i in increments.values() if i > 0}):
            if self._ledger is None:  # unreachable: increments are positive only with DP, which needs the ledger
                raise ConfigError("a DP run needs the ledger")
            self._ledger.charge_all([s for s, i in increments.items() if i == increment], increment, "federated",
                                    f"learn:{run.run_id}", now, once=key)

    def _members(self, run: RunRecord, settings: RunSettings, key: str) -> tuple[list[str], dict[str, float]]:
        """A new round's members and what each member's subject is charged (DP; 0 without).

        FedAvg: every eligible enrolled device, one a subject, charged the run's increment for this version.
        Secure FedBuff: the first ``buffer_size`` ready devices (oldest marker first), one a subject, each subject
        charged the increment of *its own* participation count: a subject in ``n`` of the run's rounds pays
        ``epsilon_after(n)`` in all, never more than the run's total (ADR 1307).
        """
        now, ledger = self._clock.now(), self._ledger
        dp = settings.dp() if settings.epsilon > 0 and ledger is not None else None
        paid = ledger.charged_once(key) if dp is not None and ledger is not None else set()
        counts: dict[str, int] = {}
        if dp is not None and _buffered(settings):
            counts = participations(self._store.secure_rounds(run.run_id), run.version, self.subject)

        def increment(device_id: str) -> float:
            n = counts.get(self.subject(device_id), 0) if _buffered(settings) else run.version
            return 0.0 if dp is None else dp.epsilon_after(n + 1) - dp.epsilon_after(n)

        def affordable(device_id: str) -> bool:  # already charged under this key: selectable whatever is left
            s = self.subject(device_id)
            return ledger is None or dp is None or s in paid or ledger.remaining(s, now) >= increment(device_id)

        if _buffered(settings):
            markers = buffer_members(ready_markers(self._store.pending(run.run_id)), run.version,
                                     settings.fedbuff().max_staleness, settings.buffer_size, self.subject,
                                     lambda d: d in run.devices and self._eligible(d) and affordable(d))
            members = [m.device_id for m in markers]
        else:
            members = [d for d in self._one_per_subject([d for d in run.devices if self._eligible(d)], run.version)
                       if affordable(d)]
        return members, {self.subject(d): increment(d) for d in members}

    def submit(self, run_id: str, device_id: str, base_version: int, payload: bytes, num_examples: int) -> RunRecord:
        """Take one encoded update and advance the run if a round or buffer is complete.

        Raises:
            PolicyDenied: ``run_not_running`` or ``not_eligible``.
            MalformedError: ``update_malformed``, ``update_dims``, ``update_norm_exceeded``,
                ``update_stale``, ``update_duplicate``.
        """
        run, settings = self._run(run_id)
        self._check_device(run, device_id)
        if settings.secure:
            raise PolicyDenied(f"run {run_id} takes updates only through secure aggregation", code="secure_only")
        if not 1 <= num_examples <= 10_000_000:
            raise MalformedError("num_examples out of range", code="update_malformed")
        stale = (base_version != run.version if settings.strategy == "fedavg"
                 else not 0 <= run.version - base_version <= settings.fedbuff().max_staleness)
        if stale:
            raise MalformedError(f"update for version {base_version}, run is at {run.version}", code="update_stale")
        dims = settings.model().size()
        update = decode_update(payload, dims)
        check_compression(payload, dims, settings.offer(base_version))  # as its round offered
        check_norm(update, settings.max_update_norm)
        if not self._store.add_update(run_id, PendingUpdate(device_id, base_version, num_examples, payload,
                                                            self._clock.now())):
            raise MalformedError("this device already sent an update for this version", code="update_duplicate")
        return self.tick(run_id)

    def tick(self, run_id: str) -> RunRecord:
        """Apply every round or buffer that is complete now (FedAvg deadlines included); returns the run."""
        for _ in range(_COMMIT_ATTEMPTS):
            run, settings = self._run(run_id)
            step = self._step(run, settings)
            if step is None:
                return run
            new_run, consumed, traffic = step
            if self._store.commit_step(new_run, consumed):
                if new_run.version > run.version:  # one round applied: what it cost each device on the wire
                    self._audit.record(AuditEvent("learning.round", self._clock.now(), run.started_by, run_id,
                                                  {"version": new_run.version, **traffic}))
                if new_run.status == "completed":
                    self._complete(new_run, settings)
                if new_run.status != "running":
                    return new_run
        return self._run(run_id)[0]

    def _step(self, run: RunRecord, settings: RunSettings
              ) -> tuple[RunRecord, list[tuple[str, int]], dict[str, Any]] | None:
        if run.status != "running":
            return None
        if settings.secure:
            return self._secure_step(run, settings)
        pending = self._store.pending(run.run_id)
        model = settings.model()
        params = _parameters(run, model)
        empty = np.zeros(0)
        if settings.strategy == "fedavg":
            current = [p for p in pending if p.base_version == run.version]
            deadline = run.round_started_at + timedelta(seconds=settings.deadline_s)
            if len(current) < len(run.devices) and not (self._clock.now() >= deadline
                                                         and len(current) >= settings.min_participants):
                return None
            fedavg = FedAvg(model, params, settings.fedavg())
            fedavg.version = run.version
            outcome = fedavg.apply_round([Update(p.device_id, p.device_id, p.base_version, p.payload, empty,
                                                 p.num_examples) for p in current])
            new_params, applied = fedavg.parameters, outcome.applied
            consumed = [(p.device_id, p.base_version) for p in pending if p.base_version <= run.version]
            counts = (len(outcome.accepted), len(outcome.rejected))
            used = current
        else:
            if len(pending) < settings.buffer_size:
                return None
            batch = pending[:settings.buffer_size]
            buff = FedBuff(model, params, settings.fedbuff())
            buff.version = run.version
            accepted = rejected = 0
            applied = False
            for p in batch:
                outcome = buff.receive(Update(p.device_id, p.device_id, p.base_version, p.payload, empty,
                                              p.num_examples))
                accepted, rejected = accepted + len(outcome.accepted), rejected + len(outcome.rejected)
                applied = applied or outcome.applied
            new_params, consumed, counts = buff.parameters, [(p.device_id, p.base_version) for p in batch], \
                (accepted, rejected)
            used = batch
        version = run.version + (1 if applied else 0)
        status = "completed" if version >= settings.rounds else "running"
        sizes = [len(p.payload) for p in used]
        names = {v: k for k, v in SCHEMES.items()}
        traffic = {"updates": len(sizes), "bytes_per_device": round(sum(sizes) / max(1, len(sizes)), 1),
                   "compression": "|".join(c.scheme for c in settings.offer(run.version)),
                   "by_scheme": dict(sorted(Counter(names.get(p.payload[4], "?") for p in used).items()))}
        return next_row(run, version=version, parameters=flatten(new_params).astype("<f8").tobytes(),
                        round_started_at=self._clock.now() if applied else run.round_started_at, status=status,
                        accepted=run.accepted + counts[0], rejected=run.rejected + counts[1]), consumed, traffic

    def _secure_step(self, run: RunRecord, settings: RunSettings
                     ) -> tuple[RunRecord, list[tuple[str, int]], dict[str, Any]] | None:
        """Apply the current version's bound round if its sum is out (any process; the run's CAS applies it once)."""
        bound = self._store.secure_round(run.run_id, run.version)
        if bound is None or self._aggregation is None:
            return None
        try:
            out = self._aggregation.status(bound.round_id, actor=run.started_by)
        except AggregationError as exc:
            if exc.reason == "round_unknown":
                return None  # still being started, or replaced by the next task request
            raise
        if out["phase"] != "done":
            return None
        plan = _plan(bound, settings)
        mean = plan.scatter(plan.decode_sum(out["sum"]), bound.round_id) / len(bound.members)  # fixed denominator
        params = flatten(_parameters(run, settings.model())) + settings.server_lr * mean
        survivors = int(out["survivors"])
        version = run.version + 1
        consumed = [(p.device_id, p.base_version) for p in self._store.pending(run.run_id)
                    if p.device_id in bound.members] if _buffered(settings) else []  # the members' ready markers
        return next_row(run, version=version, parameters=params.astype("<f8").tobytes(),
                        round_started_at=self._clock.now(),
                        status="completed" if version >= settings.rounds else "running",
                        accepted=run.accepted + survivors,
                        rejected=run.rejected + len(bound.members) - survivors), consumed, \
            {"updates": survivors, "bytes_per_device": 4 * plan.dims, "round": bound.round_id,
             "compression": "none" if plan.dims == plan.model_dims else f"randk {plan.dims}/{plan.model_dims}",
             "note": "masked vector only (u32 a coordinate); secure aggregation's key and share messages are extra"}

    def _complete(self, run: RunRecord, settings: RunSettings) -> None:
        model = settings.model()
        record = self._models.publish(settings.model_name, model, _parameters(run, model),
                                      metrics={"versions": run.version, "accepted_updates": run.accepted},
                                      source=f"learn:{run.run_id}", actor=run.started_by)
        self._audit.record(AuditEvent("learning.completed", self._clock.now(), run.started_by, run.run_id,
                                      {"model": settings.model_name, "model_version": record.version}))

    def stop(self, run_id: str, *, actor: str) -> RunRecord:
        """Stop a running run (its updates are no longer taken; nothing is published).

        Raises:
            ConfigError: ``unknown_run``, or the run is not running.
        """
        for _ in range(_COMMIT_ATTEMPTS):
            run, _ = self._run(run_id)
            if run.status != "running":
                raise ConfigError(f"run {run_id} is {run.status}", code="run_not_running")
            if self._store.commit_step(next_row(run, status="stopped"), []):
                self._audit.record(AuditEvent("learning.stopped", self._clock.now(), actor, run_id,
                                              {"version": run.version}))
                return self._run(run_id)[0]
        raise IntegrityError(f"run {run_id} kept changing while stopping")

    def status(self, run_id: str) -> dict[str, Any]:
        """A run's progress (no parameters)."""
        run, settings = self._run(run_id)
        return {"run_id": run.run_id, "status": run.status, "model": settings.model_name,
                "strategy": settings.strategy, "version": run.version, "rounds": settings.rounds,
                "devices": len(run.devices), "pending_updates": len(self._store.pending(run_id)),
                "secure": settings.secure, "epsilon": settings.epsilon, "delta": settings.delta,
                "noise_multiplier": round(settings.noise_multiplier, 4),
                "epsilon_spent": round(settings.dp().epsilon_after(run.version), 4) if settings.epsilon > 0 else 0.0,
                "accepted_updates": run.accepted, "rejected_updates": run.rejected,
                "round_started_at": run.round_started_at.isoformat(), "started_by": run.started_by}

    def contributions(self, device_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Runs that enrolled any of ``device_ids`` and the model versions they published (erasure reports)."""
        wanted = set(device_ids)
        published: dict[str, list[int]] = {}
        for record in self._models.list():
            published.setdefault(record.source, []).append(record.version)
        out = []
        for run in self._store.runs():
            hit = sorted(wanted & set(run.devices))
            if hit:
                name = str(run.config["model_name"])
                out.append({"run_id": run.run_id, "status": run.status, "devices": hit, "model": name,
                            "model_versions": published.get(f"learn:{run.run_id}", [])})
        return out

    def unlearn(self, device_ids: Sequence[str], *, actor: str) -> list[dict[str, Any]]:
        """Retrain every run that enrolled any of ``device_ids`` without them (the erasure hook).

        Each run is one SISA shard: its model depends only on its enrolled
        devices, so unlearning a subject retrains only the runs (shards) they
        were in, from the initial model, among the remaining devices, under
        the same settings, as a new run ``<run>.u1`` that publishes the
        model's next version. A running run is stopped first. Returns, per
        affected run, the model, the versions that held the subject and the
        retraining run (or why there is none: too few devices left).
        """
        out = []
        ids = [r.run_id for r in self._store.runs()]
        for item in self.contributions(device_ids):
            if any(i.startswith(f"{item['run_id']}.u") for i in ids):
                continue  # superseded by its retraining run (listed on its own if it holds the devices)
            run, settings = self._run(item["run_id"])
            if run.status == "running":
                self.stop(run.run_id, actor=actor)
            remaining = [d for d in run.devices if d not in set(device_ids)]
            retrain_id = f"{run.run_id}.u1"[:64]
            entry = {"model": item["model"], "versions": item["model_versions"], "run_id": run.run_id,
                     "retrain_run": None, "reason": ""}
            try:
                self.start(retrain_id, settings, remaining, actor=actor)
                entry["retrain_run"] = retrain_id
            except (ConfigError, IntegrityError) as exc:
                entry["reason"] = str(exc)
            self._audit.record(AuditEvent("learning.unlearn", self._clock.now(), actor, run.run_id,
                                          {"model": item["model"], "versions": item["model_versions"],
                                           "retrain_run": entry["retrain_run"] or "", "devices": len(remaining)}))
            out.append(entry)
        return out

    def model_of(self, run_id: str) -> Model:
        """The architecture a run trains."""
        return self._run(run_id)[1].model()

    def model_name_of(self, run_id: str) -> str:
        """The name a run publishes its model under."""
        return self._run(run_id)[1].model_name

    def runs(self) -> list[RunRecord]:
        """Every run."""
        return self._store.runs()
