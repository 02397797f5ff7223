"""On-device inference: run a verified model on the device's own data and report only its outputs.

:class:`OnDeviceInference` takes a :class:`~iotguard.learn.artifact.ModelArtifact`
that the agent fetched and verified
(:meth:`~iotguard.agent.learning.LearningParticipant.fetch_model`: hub
signature, key endorsed by the pinned fleet CA), runs it on samples that never
leave the device, and submits each output as one field of a reading through
the agent's privacy pipeline, so the device model's data contract decides
what leaves: the field must be declared by the contract (a ``category``
field naming the model's classes, e.g. ``digit`` of ``mic-1``), purposes,
consent and rate limits apply as to any reading. The inputs are never part
of what is submitted.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from iotguard.agent.runtime import Agent
from iotguard.errors import ConfigError
from iotguard.learn.artifact import ModelArtifact
from iotguard.privacy.contract import FieldType

__all__ = ["OnDeviceInference"]


class OnDeviceInference:
    """A verified model run on the device, its outputs reported under the data contract.

    Args:
        agent: The enrolled agent, its privacy pipeline attached (:meth:`Agent.attach_privacy`).
        artifact: The verified model.
        output_field: The contract field that carries the model's output (its categories are the classes).

    Raises:
        ConfigError: no privacy pipeline, or the contract does not declare the field as one category per class.
    """

    def __init__(self, agent: Agent, artifact: ModelArtifact, output_field: str) -> None:
        if agent.privacy is None:
            raise ConfigError("attach the device's data contract first: outputs leave only through it")
        spec = agent.privacy.contract.fields.get(output_field)
        if spec is None or spec.type is not FieldType.CATEGORY or len(spec.categories) != artifact.model.classes:
            raise ConfigError(f"the data contract of this device does not declare {output_field!r} as a category "
                              f"field with {artifact.model.classes} categories")
        self.agent, self.artifact, self.field = agent, artifact, output_field
        self._categories = tuple(spec.categories)

    def infer(self, x: npt.NDArray[np.float64]) -> list[str]:
        """The model's output for each row of ``x``, as the contract's categories (nothing is sent)."""
        return [self._categories[int(c)] for c in self.artifact.predict(np.atleast_2d(x))]

    def report(self, x: npt.NDArray[np.float64], ts_ms: int | None = None) -> list[int]:
        """Infer each row of ``x`` and submit each output alone through the privacy pipeline.

        Returns the sequence numbers of the readings submitted (the contract may release fewer than one per
        row: rate limits, consent).
        """
        now = int(time.time() * 1000) if ts_ms is None else ts_ms
        seqs: list[int] = []
        for i, label in enumerate(self.infer(x)):
            seqs += self.agent.collect({self.field: label}, now + i)
        return seqs
