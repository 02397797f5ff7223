"""The client side: a Flower-style ``NumPyClient`` and the device's update pipeline.

:class:`NumPyClient` has Flower's signatures (``get_parameters(config)``,
``fit(parameters, config) -> (parameters, num_examples, metrics)``,
``evaluate(parameters, config) -> (loss, num_examples, metrics)``), so a
Flower ``NumPyClient`` subclass ports by changing its import.
:class:`LocalTrainingClient` trains a :class:`~iotguard.learn.model.Model`
on data that stays on the device.

:class:`Participant` is what the agent runs around any client: it turns the
trained parameters into the model *update* (difference from the global
model), clips it when the round asks (DP), and encodes it under the
round's compression with error feedback. Only the encoded (or, under secure
aggregation, masked) update leaves the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError
from iotguard.learn.compress import Compression, UpdateEncoder
from iotguard.learn.dp import clip
from iotguard.learn.model import Model, NDArrays, flatten, sgd

__all__ = ["LocalTrainingClient", "NumPyClient", "Participant", "RoundConfig", "Update"]

Array = npt.NDArray[np.float64]
Scalar = bool | int | float | str
Config = Mapping[str, Scalar]


class NumPyClient(Protocol):
    """Flower's ``NumPyClient`` interface."""

    def get_parameters(self, config: Config) -> NDArrays:
        """The client's current parameters."""
        ...

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train from ``parameters`` on local data; trained parameters, examples used, metrics."""
        ...

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, dict[str, Scalar]]:
        """Loss on local data, examples used, metrics (e.g. ``accuracy``)."""
        ...


class LocalTrainingClient:
    """A :class:`NumPyClient` training ``model`` by minibatch SGD on local ``(x, y)``.

    Config keys read by :meth:`fit`: ``epochs`` (default 1), ``batch_size``
    (default 32), ``lr`` (default 0.1).
    """

    def __init__(self, model: Model, x: Array, y: npt.NDArray[np.int64], seed: int = 0) -> None:
        if len(x) != len(y) or x.ndim != 2 or x.shape[1] != model.features:
            raise ConfigError("local data does not match the model")
        self.model, self._x, self._y = model, x, y
        self._params = model.initial(seed)
        self._rng = np.random.default_rng(seed)

    def get_parameters(self, config: Config) -> NDArrays:
        return [p.copy() for p in self._params]

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        self.model.check(parameters)
        epochs, batch = int(config.get("epochs", 1)), int(config.get("batch_size", 32))
        lr = float(config.get("lr", 0.1))
        if not (1 <= epochs <= 100 and batch >= 1 and 0 < lr <= 10):
            raise ConfigError("fit config out of range")
        self._params = sgd(self.model, parameters, self._x, self._y, epochs=epochs, batch_size=batch, lr=lr,
                           rng=self._rng)
        return self.get_parameters(config), len(self._y), {}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, dict[str, Scalar]]:
        self.model.check(parameters)
        loss, _ = self.model.loss_and_grad(parameters, self._x, self._y)
        acc = float(np.mean(self.model.predict(parameters, self._x) == self._y))
        return loss, len(self._y), {"accuracy": acc}


@dataclass(frozen=True)
class RoundConfig:
    """What the hub asks of a participant in one round.

    Attributes:
        round: Model version the round starts from.
        fit: Config passed to ``fit`` (epochs, batch_size, lr).
        clip_norm: L2 bound on the update (DP or norm policy), or ``None``.
        compression: Negotiated update compression.
    """

    round: int
    fit: Mapping[str, Scalar] = field(default_factory=dict)
    clip_norm: float | None = None
    compression: Compression = field(default_factory=Compression)


@dataclass(frozen=True)
class Update:
    """One device's contribution, as the hub receives it.

    Attributes:
        device_id: Sender.
        subject: Data subject charged for it.
        base_version: Model version it was computed from (FedBuff staleness).
        payload: Encoded update bytes (:func:`~iotguard.learn.compress.decode_update`).
        vector: The dense update the device computed (used only for secure
            aggregation, where it is masked on the device before anything is sent).
        num_examples: Examples trained on.
    """

    device_id: str
    subject: str
    base_version: int
    payload: bytes
    vector: Array
    num_examples: int


class Participant:
    """Device side of federated learning around one :class:`NumPyClient`."""

    def __init__(self, device_id: str, subject: str, client: NumPyClient, seed: int = 0) -> None:
        self.device_id, self.subject, self.client = device_id, subject, client
        self._encoder: UpdateEncoder | None = None
        self._seed = seed

    def train(self, global_params: NDArrays, version: int, config: RoundConfig) -> Update:
        """Fit from the global model and return the (clipped, encoded) update."""
        trained, n, _ = self.client.fit([p.copy() for p in global_params], dict(config.fit))
        delta = flatten(trained) - flatten(global_params)
        if config.clip_norm is not None:
            delta = clip(delta, config.clip_norm)
        if self._encoder is None or self._encoder.dims != delta.size:
            self._encoder = UpdateEncoder(delta.size, self._seed)
        payload = self._encoder.encode(delta, config.compression)
        return Update(self.device_id, self.subject, version, payload, delta, n)
