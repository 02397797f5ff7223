"""The agent's side of federated learning: train for a hub run, and fetch a published model to run locally.

Both requests are signed device requests (``learn_task``, ``learn_update``)
through the hub's device plane and Cedar; only the encoded update leaves the
device. The hub's answer is parsed strictly (architecture bounds, exact
parameter count, finite values, known compression) before anything trains
on it. In a secure run the update never leaves the device even encoded: it
is clipped, rounded and noised in integers (:mod:`iotguard.learn.distributed`)
and enters the hub's secure-aggregation round (signed ``aggregate``
requests, :class:`~iotguard.agent.secagg.RoundClient`) only masked. In a
secure FedBuff run (ADR 1307) the device trains when it likes, holds its
update, reports ``ready`` and enters the round the hub binds for a buffer of
ready devices with its update scaled by the staleness weight the hub gives.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotguard.agent.exchange import CA_FILE
from iotguard.agent.runtime import Agent
from iotguard.agent.secagg import AGGREGATE_PATH, RoundClient
from iotguard.analytics.secagg import AggregationError
from iotguard.errors import ConfigError, EnrollmentError, MalformedError
from iotguard.learn.artifact import ModelArtifact, verify_endorsed_artifact
from iotguard.learn.client import NumPyClient, Participant, RoundConfig
from iotguard.learn.compress import SCHEMES, Compression
from iotguard.learn.distributed import SecureRoundPlan, discrete_gaussian
from iotguard.learn.dp import clip
from iotguard.learn.model import Model, NDArrays, unflatten

__all__ = ["LearningParticipant"]

_ROUND_ID = re.compile(r"[0-9a-f]{32}")
#: The hub's answers that this device's round went on without it (a late or repeated step after the round
#: moved on): it waits for the version's next round or the next version instead of rejoining with new keys.
_LEFT_BEHIND = ("wrong_phase", "message_duplicate", "not_in_round")


def _task(answer: Mapping[str, Any]) -> tuple[int, Model, NDArrays, RoundConfig]:
    try:
        arch = answer["model"]
        model = Model(int(arch["features"]), int(arch["classes"]), int(arch["hidden"]))
        version = int(answer["version"])
        raw = base64.b64decode(str(answer["parameters"]), validate=True)
        fit = {k: float(answer["fit"][k]) for k in ("epochs", "batch_size", "lr")}
        clip = answer["clip_norm"]
        compression = Compression(str(answer["compression"]), float(answer["topk_fraction"]))
    except (KeyError, TypeError, ValueError, binascii.Error, ConfigError) as exc:
        raise MalformedError("hub's learning task is malformed", code="malformed") from exc
    if len(raw) != 8 * model.size() or version < 0:
        raise MalformedError("hub's learning task has the wrong parameter count", code="malformed")
    params = unflatten(np.frombuffer(raw, dtype="<f8").astype(np.float64), model.initial(0))
    model.check(params)
    config = RoundConfig(version, {"epochs": int(fit["epochs"]), "batch_size": int(fit["batch_size"]),
                                   "lr": fit["lr"]},
                         clip_norm=None if clip is None else float(clip), compression=compression)
    return version, model, params, config


def _secure(raw: Any, dims: int) -> tuple[str, SecureRoundPlan] | None:
    if raw is None:
        return None
    try:
        round_id = str(raw["round"])
        plan = SecureRoundPlan(int(raw["dims"]), float(raw["clip_norm"]), float(raw["scale"]),
                               float(raw["noise_std"]), int(raw["model_dims"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedError("hub's secure round is malformed", code="malformed") from exc
    if not _ROUND_ID.fullmatch(round_id) or plan.model_dims != dims:
        raise MalformedError("hub's secure round does not match the model", code="malformed")
    return round_id, plan


class LearningParticipant:
    """Takes part in a hub training run with a local :class:`~iotguard.learn.client.NumPyClient`.

    Args:
        agent: The enrolled agent (signs the requests with its identity key).
        client: Trains on data that stays on the device.
        client_for: Instead of ``client``: makes the client for the model the hub's task names (an agent that
            does not know the architecture before its first task, :mod:`iotguard.agent.learning_loop`).
        accepts: The update compressions this device can send (``None``: every scheme); the hub picks the
            first its round offers that is here.
        max_update_bytes: Most bytes one encoded update may take on this device's link (0: no limit).

    Raises:
        ConfigError: neither or both of ``client`` and ``client_for``; an unknown scheme in ``accepts``.
    """

    def __init__(self, agent: Agent, client: NumPyClient | None = None, *,
                 client_for: Callable[[Model], NumPyClient] | None = None,
                 accepts: Sequence[str] | None = None, max_update_bytes: int = 0) -> None:
        if (client is None) == (client_for is None):
            raise ConfigError("give a client or a client_for function")
        if accepts is not None and (not 1 <= len(accepts) <= len(SCHEMES) or not set(accepts) <= set(SCHEMES)):
            raise ConfigError(f"accepts must name 1 to {len(SCHEMES)} of {', '.join(SCHEMES)}")
        if not 0 <= max_update_bytes < 2**31:
            raise ConfigError("max_update_bytes must be 0 (no limit) or a positive size")
        self._ask: dict[str, Any] = {} if accepts is None else {"accepts": list(dict.fromkeys(accepts))}
        if max_update_bytes:
            self._ask["max_update_bytes"] = max_update_bytes
        self._agent = agent
        self._client_for = client_for
        self._model: Model | None = None
        self._participant = None if client is None else Participant(agent.device_id, agent.device_id, client)
        self._sent: dict[str, tuple[int, str]] = {}  # per run: the version and round (secure) sent into
        self._rounds: dict[str, RoundClient] = {}
        #: Per run: the coordinates a random-k secure round did not send (error feedback), and the residual of
        #: the round in flight (kept only if that round's sum comes out).
        self._residual: dict[str, np.ndarray] = {}
        #: Secure FedBuff, per run: the update this device trained and holds (its base version and vector) until a
        #: round that took it in is done.
        self._held: dict[str, tuple[int, np.ndarray]] = {}
        self._next_residual: dict[str, np.ndarray] = {}
        #: The name the run publishes its model under (from the hub's task), per run.
        self.model_names: dict[str, str] = {}

    def fetch_model(self, name: str, version: int = 0) -> ModelArtifact:
        """Fetch a published model (``version`` 0: the latest) and verify it before it can run.

        The artifact must be signed by the hub's model key, and that key
        endorsed by the fleet CA this agent pinned at enrollment.

        Raises:
            IntegrityError: endorsement or signature does not verify.
            MalformedError: the answer or the artifact is malformed.
        """
        answer = self._agent.request("learn_model", "/v1/learn/model", {"name": name, "version": version})
        try:
            artifact, key, endorsement = (base64.b64decode(str(answer[k]), validate=True)
                                          for k in ("artifact", "signing_key", "endorsement"))
        except (KeyError, ValueError, binascii.Error) as exc:
            raise MalformedError("hub's model answer is malformed", code="malformed") from exc
        ca = x509.load_pem_x509_certificate((self._agent.dir / CA_FILE).read_bytes()).public_key()
        if not isinstance(ca, Ed25519PublicKey):
            raise MalformedError("fleet CA key is not Ed25519", code="malformed")
        return verify_endorsed_artifact(artifact, key, endorsement, ca.public_bytes_raw())

    def train_round(self, run_id: str) -> dict[str, Any]:
        """Pull the run's current model, train, send the update; the hub's answer (``version``, ``status``).

        If this device already sent its update for the run's current version
        (a FedAvg round still waiting for others), nothing is trained or sent
        and the answer's status is ``waiting``. In a secure run the update
        goes into the round's secure aggregation: this call and the next ones
        each take one step of that round (status ``aggregating`` and the
        round's ``phase``) until it is done; a failed round is trained again
        for the round the hub binds in its place (a new round id for the same
        version). A step the hub refuses because the round went on without
        this device (``wrong_phase``, ``message_duplicate``,
        ``not_in_round``) leaves that round: the answer is ``waiting`` with
        that ``reason``, and the device takes part again in the version's
        next round or the next version.

        Raises:
            MalformedError: the hub's task is malformed.
            EnrollmentError: the hub refused a request (its reason code is in the message).
            AggregationError: the secure round's messages are malformed or forged.
        """
        active = self._rounds.get(run_id)
        if active is not None:
            return self._aggregate(run_id, active)
        held = self._held.get(run_id)
        try:
            answer = self._agent.request("learn_task", "/v1/learn/task", {
                "run_id": run_id, **self._ask, **({} if held is None else {"ready": held[0] + 1})})
        except EnrollmentError as exc:
            if "update_stale" in str(exc):  # the held update is too old for the run: train on the current model
                self._held.pop(run_id, None)
            raise
        version, model, params, config = _task(answer)
        if config.compression.scheme not in self._ask.get("accepts", SCHEMES):
            raise MalformedError(f"hub asked for {config.compression.scheme}, which this device did not offer",
                                 code="malformed")
        name = answer.get("model_name")
        if isinstance(name, str) and 0 < len(name) <= 128:
            self.model_names[run_id] = name
        if self._client_for is not None and self._model != model:
            self._participant = Participant(self._agent.device_id, self._agent.device_id, self._client_for(model))
            self._model = model
        if self._participant is None:  # unreachable: the constructor or the line above made one
            raise ConfigError("no client to train with")
        secure = _secure(answer.get("secure"), model.size())
        if answer.get("buffered") is True:
            return self._buffered(run_id, version, params, config, secure, answer["secure"])
        round_id = secure[0] if secure is not None else ""
        sent_version, sent_round = self._sent.get(run_id, (-1, ""))
        if sent_version > version or (sent_version, sent_round) == (version, round_id):
            return {"run_id": run_id, "version": version, "status": "waiting"}  # a new round id: the last failed
        update = self._participant.train(params, version, config)
        if secure is not None:
            plan = secure[1]
            carried = update.vector + self._residual.get(run_id, 0.0)
            sent, self._next_residual[run_id] = plan.sparsify(carried, round_id)
            value = plan.encode(sent, discrete_gaussian)  # clipped, rounded, noised: never sent as is
            client = RoundClient(lambda body: self._agent.request("aggregate", AGGREGATE_PATH, body), round_id, value)
            self._rounds[run_id], self._sent[run_id] = client, (version, round_id)
            return self._aggregate(run_id, client) | {"version": version}
        result = self._agent.request("learn_update", "/v1/learn/update", {
            "run_id": run_id, "base_version": update.base_version, "num_examples": update.num_examples,
            "update": update.payload})
        self._sent[run_id] = (version, "")
        return result

    def _buffered(self, run_id: str, version: int, params: NDArrays, config: RoundConfig,
                  secure: tuple[str, SecureRoundPlan] | None, raw: Any) -> dict[str, Any]:
        """Secure FedBuff: train and hold an update (``trained``), wait for a buffer (``buffering``), or enter the
        round the hub bound for this device's buffer with the update scaled by its staleness weight."""
        held = self._held.get(run_id)
        if secure is None:
            if held is not None:
                return {"run_id": run_id, "version": version, "status": "buffering"}
            if self._participant is None:  # unreachable: train_round made one
                raise ConfigError("no client to train with")
            update = self._participant.train(params, version, config)
            self._held[run_id] = (version, update.vector)
            return {"run_id": run_id, "version": version, "status": "trained"}  # reported ready on the next call
        if held is None:  # bound while this device held nothing (it restarted): the round goes on without it
            return {"run_id": run_id, "version": version, "status": "waiting"}
        try:
            weight, base = float(raw["weight"]), int(raw["base_version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedError("hub's buffered round is malformed", code="malformed") from exc
        if not 0 < weight <= 1 or base != held[0]:
            raise MalformedError("hub's staleness weight or base version is not this device's", code="malformed")
        round_id, plan = secure
        sent, self._next_residual[run_id] = plan.sparsify(held[1] + self._residual.get(run_id, 0.0), round_id)
        # Clipped first, then scaled by w <= 1: the vector's norm stays within C, the round's sensitivity.
        value = plan.encode(weight * clip(sent, plan.clip_norm), discrete_gaussian)
        client = RoundClient(lambda body: self._agent.request("aggregate", AGGREGATE_PATH, body), round_id, value)
        self._rounds[run_id] = client
        return self._aggregate(run_id, client) | {"version": version, "base_version": base, "weight": weight}

    def _aggregate(self, run_id: str, client: RoundClient) -> dict[str, Any]:
        try:
            phase = client.step()
        except (AggregationError, EnrollmentError) as exc:
            self._rounds.pop(run_id, None)
            left = next((code for code in _LEFT_BEHIND if f" {code}" in str(exc)), "")
            if left:  # the round went on without this device: wait for the next round (or version)
                self._held.pop(run_id, None)
                return {"run_id": run_id, "status": "waiting", "reason": left}
            self._sent.pop(run_id, None)  # round_unknown (still starting), refused or transient: train again
            raise
        if phase in ("done", "failed"):
            self._rounds.pop(run_id, None)
            residual = self._next_residual.pop(run_id, None)
            if phase == "failed":
                self._sent.pop(run_id, None)  # a held FedBuff update stays ready for the round replacing it
            else:
                self._held.pop(run_id, None)
                if residual is not None:
                    self._residual[run_id] = residual
        return {"run_id": run_id, "status": "aggregating", "phase": phase}
