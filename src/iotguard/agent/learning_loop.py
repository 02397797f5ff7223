"""The agent learning by itself: ``iotguard agent --learn RUN --learn-data FILE`` (one step per loop turn).

:class:`LearningLoop` is what the agent's main loop runs beside its sensor:

1. it polls the hub for the run's task (signed ``learn_task``), trains on the
   device's own data (a local ``.npz`` file, ``x`` and ``y``: it never
   leaves the device) and sends the protected update: clipped when the run
   asks, and in a secure run noised in integers and masked through the
   round's secure aggregation (:class:`~iotguard.agent.learning.LearningParticipant`).
   A device not selected for a round, or a round still short of devices,
   is a normal answer (409 ``not_selected`` / ``too_few_participants``):
   the loop asks again later. In a secure FedBuff run it trains, holds the
   update and polls with ``ready`` (``buffering``) until a buffer's round
   takes it in (ADR 1307);
2. when the run has completed it fetches the published model and verifies
   it before anything runs it; a model that does not verify is refused and
   never run. A device holding the fleet's trusted TUF root fetches it
   through the firmware-update channel only
   (:class:`~iotguard.agent.model_delivery.TufModelSource`: TUF, then the
   artifact's own signature), waiting until the operator has published it
   there (``iotguard models publish-tuf``); a device without one (the hub has
   no firmware repository) uses the hub-signed ``learn_model`` answer (hub
   signature, key endorsed by the pinned fleet CA). The output line names
   the path (``via tuf`` / ``via hub-key``);
3. with an output field it runs the model on its local samples, one a turn,
   and reports only the outputs through the data contract
   (:class:`~iotguard.agent.inference.OnDeviceInference`).

Every state change is one line on the agent's output (``learning: ...``).
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt

from iotguard.agent.inference import OnDeviceInference
from iotguard.agent.learning import LearningParticipant
from iotguard.agent.model_delivery import TufModelSource, has_trusted_root
from iotguard.agent.runtime import Agent
from iotguard.analytics.secagg import AggregationError
from iotguard.errors import ConfigError, IntegrityError, IotGuardError, MalformedError, UpdateRefused
from iotguard.learn.artifact import ModelArtifact
from iotguard.learn.client import LocalTrainingClient
from iotguard.learn.model import Model, accuracy

__all__ = ["LearningLoop", "load_local_data"]

MAX_DATA_BYTES = 256 << 20
MAX_ROWS = 1_000_000
_WAIT = ("unknown_run", "not_selected", "too_few_participants", "budget_exhausted", "update_stale")


def load_local_data(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The device's training data: ``x`` (rows x features, finite) and ``y`` (integer labels) from a ``.npz``.

    Raises:
        ConfigError: missing, too large, not an ``.npz`` of two such arrays (no pickles are loaded).
    """
    try:
        if path.stat().st_size > MAX_DATA_BYTES:
            raise ConfigError(f"learning data {path} is over {MAX_DATA_BYTES >> 20} MiB")
        with np.load(path, allow_pickle=False) as npz:
            if set(npz.files) != {"x", "y"}:
                raise ConfigError(f"learning data {path} must hold exactly the arrays x and y")
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"learning data {path} is not readable as .npz: {type(exc).__name__}") from exc
    if (x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or not 1 <= len(y) <= MAX_ROWS
            or x.dtype.kind not in "fiu" or y.dtype.kind not in "iu"):
        raise ConfigError(f"learning data {path}: x must be rows x features (numbers), y one integer label a row")
    xf = x.astype(np.float64)
    if not np.all(np.isfinite(xf)) or (y < 0).any():
        raise ConfigError(f"learning data {path}: x must be finite, labels non-negative")
    return xf, y.astype(np.int64)


class LearningLoop:
    """Train for one hub run, then fetch, verify and run its model (see the module docstring).

    Args:
        agent: The enrolled agent (for inference: its data contract attached).
        run_id: The hub's training run this device was enrolled in.
        data: Local ``(x, y)`` (:func:`load_local_data`).
        output_field: The contract field carrying the model's output (``""``: fetch and verify, do not report).
        poll_s: Seconds between polls while waiting (not selected, run not started).
        device_model: This device's model: with a trusted TUF root, models come through its TUF role.
        model_source: Replaces the TUF model source built from the agent's update channel.
        accepts: Update compressions this device can send (``None``: all); negotiated per round with the hub.
        max_update_bytes: Most bytes one encoded update may take (0: no limit).
    """

    def __init__(self, agent: Agent, run_id: str, data: tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]],
                 output_field: str = "", *, poll_s: float = 1.0, device_model: str = "",
                 model_source: TufModelSource | None = None, accepts: Sequence[str] | None = None,
                 max_update_bytes: int = 0) -> None:
        self.agent, self.run_id, self.output_field, self.poll_s = agent, run_id, output_field, poll_s
        self.device_model, self._source = device_model, model_source
        self.delivery = ""  # "tuf" or "hub-key" once a model was fetched
        self.x, self.y = data
        self.state = "training"  # -> fetching -> inferring | done | refused
        self.artifact: ModelArtifact | None = None
        self.reported = 0  # outputs released by the data contract
        self.readings = 0  # the readings that carried them
        self._learner = LearningParticipant(agent, client_for=self._client, accepts=accepts,
                                            max_update_bytes=max_update_bytes)
        self._inference: OnDeviceInference | None = None
        self._next = 0.0
        self._row = 0
        self._waiting = self._phase = ""
        self._last: tuple[object, object] = ("", None)

    def _client(self, model: Model) -> LocalTrainingClient:
        if self.x.shape[1] != model.features or int(self.y.max()) >= model.classes:
            raise ConfigError(f"local data ({self.x.shape[1]} features, labels up to {int(self.y.max())}) does not "
                              f"fit the run's model ({model.features} features, {model.classes} classes)")
        return LocalTrainingClient(model, self.x, self.y, seed=sum(self.agent.device_id.encode()))

    def _say(self, line: str) -> None:
        print(f"learning: {line}", flush=True)

    def step(self) -> None:
        """Take one step if one is due (never raises for what the hub or the network answers)."""
        if self.state in ("done", "refused") or time.monotonic() < self._next:
            return
        try:
            if self.state == "training":
                self._train()
            elif self.state == "fetching":
                self._fetch()
            elif self.state == "inferring":
                self._infer()
        except ConfigError as exc:  # this device's data or contract cannot take part
            self.state = "refused"
            self._say(f"refused: {exc}")
        except (IotGuardError, AggregationError, httpx.HTTPError) as exc:
            self._next = time.monotonic() + self.poll_s
            self._say(f"retrying: {type(exc).__name__}: {exc}")

    def _train(self) -> None:
        try:
            answer = self._learner.train_round(self.run_id)
        except IotGuardError as exc:
            text = str(exc)
            if "run_not_running" in text:
                self.state = "fetching"
                self._say(f"run {self.run_id} is over")
            elif any(code in text for code in _WAIT):
                self._next = time.monotonic() + self.poll_s  # a normal answer: ask again later
                reason = next(code for code in _WAIT if code in text)
                if reason != self._waiting:  # one line per change of reason, not one a poll
                    self._waiting = reason
                    self._say(f"waiting: {reason}")
            elif " 403 " in text:
                self.state = "refused"
                self._say(f"refused by the hub: {text}")
            else:
                raise
            return
        status = answer.get("status")
        self._waiting = ""
        if answer.get("reason"):  # its secure round went on without it: it joins the next one by itself
            self._say(f"secure round: left ({answer['reason']}); waiting for the next round")
        if status == "completed":
            self.state = "fetching"
            self._say(f"run {self.run_id} completed")
        elif status in ("waiting", "running", "buffering", "trained"):
            self._next = time.monotonic() + self.poll_s / 4
        elif status == "aggregating":
            self._next = time.monotonic() + 0.05
        if status == "aggregating":
            if answer.get("phase") != self._phase:
                self._phase = str(answer.get("phase"))
                self._say(f"secure round: {self._phase}")
        elif (status, answer.get("version")) != self._last:
            self._last = (status, answer.get("version"))
            self._say(f"round: {status} at version {answer.get('version')}")

    def _fetch(self) -> None:
        name = self._learner.model_names.get(self.run_id)
        if name is None:
            self.state = "done"
            self._say(f"run {self.run_id} ended before this device got a task: no model to fetch")
            return
        if self._source is not None or (self.device_model and has_trusted_root(self.agent.dir)):
            self._fetch_tuf(name)
            return
        try:
            artifact = self._learner.fetch_model(name)
        except IotGuardError as exc:
            if "unknown_model" in str(exc):  # stopped runs publish nothing
                self.state = "done"
                self._say(f"no published model {name}")
                return
            if isinstance(exc, IntegrityError | MalformedError):
                self.state = "refused"
                self._say(f"model {name} refused: {exc}")
                return
            raise
        self._accept(artifact, "hub-key")

    def _tuf_source(self) -> TufModelSource:
        if self._source is None:
            from cryptography import x509
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            from iotguard.agent.exchange import CA_FILE
            from iotguard.agent.update_channel import REPOSITORY_URL, device_update_channel

            ca = x509.load_pem_x509_certificate((self.agent.dir / CA_FILE).read_bytes()).public_key()
            if not isinstance(ca, Ed25519PublicKey):
                raise MalformedError("fleet CA key is not Ed25519", code="malformed")
            fetcher, _ = device_update_channel(self.agent)
            self._source = TufModelSource(self.agent.dir, device_model=self.device_model, fetcher=fetcher,
                                          base_url=REPOSITORY_URL, ca_public_key=ca.public_bytes_raw())
        return self._source

    def _fetch_tuf(self, name: str) -> None:
        """Fetch ``name`` through TUF only: refused if TUF or the artifact signature refuses, wait if unlisted."""
        try:
            artifact = self._tuf_source().fetch(name)
        except (UpdateRefused, IntegrityError, MalformedError) as exc:
            if exc.code == "download_failed":
                raise  # transient: step() retries after poll_s
            self.state = "refused"
            self._say(f"model {name} refused via tuf: {exc}")
            return
        if artifact is None:  # the operator has not published it as a TUF target (yet)
            self._next = time.monotonic() + self.poll_s
            if self._waiting != "model_not_in_tuf":
                self._waiting = "model_not_in_tuf"
                self._say(f"waiting: model {name} is not in the signed TUF metadata of {self.device_model}")
            return
        self._accept(artifact, "tuf")

    def _accept(self, artifact: ModelArtifact, delivery: str) -> None:
        name = artifact.name
        self.artifact, self.delivery = artifact, delivery
        local = accuracy(artifact.model, artifact.parameters, self.x, self.y)
        self._say(f"model {name} v{artifact.version} verified via {delivery}; accuracy on local data {local:.4f}")
        if not self.output_field:
            self.state = "done"
            return
        self._inference = OnDeviceInference(self.agent, artifact, self.output_field)
        self.state = "inferring"

    def _infer(self) -> None:
        if self._inference is None:
            return
        row = self.x[self._row % len(self.x)]
        self._row += 1
        sent = len(self._inference.report(row))
        if sent:  # the contract released it (rate limits, consent may hold an output back)
            self.reported += 1
            self.readings += sent
            self._say(f"reported {self.reported} outputs ({self.output_field}) in {self.readings} readings")
        self._next = time.monotonic() + self.poll_s
