"""What the devices of one model use: the (protocol, port) keys several of them used in the learning window.

A device judged against its own new-port baseline (:class:`~iotguard.detection.rules.NewPortRule`)
meets a port it did not use in its own first flows whenever a rare benign
exchange comes later: a firmware check every few hours, an NTP exchange.
Devices of one model run the same firmware, so such a port is one that
other devices of the model used in the same window. In a 50-device
simulated fleet, three hours past the window, the rule raised 40 low
alerts on 17 devices (each a re-attestation under the default playbook),
all for the update server's and NTP's ports, one device seven times
(ADR 0712).

:class:`ModelPorts` gathers, while the window learns, which devices of each
model used each key, and :meth:`freeze` keeps the keys that at least
``min_devices`` distinct devices used. The window's guard holds: devices
flagged while learning are forgotten (:meth:`forget`), and a key one device
alone used is not the model's. Bounded: at most ``max_keys`` keys per model
and ``min_devices`` devices remembered per key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from iotguard.errors import MalformedError

__all__ = ["ModelPorts", "decode_model_ports", "encode_model_ports"]

#: Most models and keys per model a frozen set may hold (a shared index stays small).
MAX_MODELS, MAX_KEYS = 1024, 4096


class ModelPorts:
    """Keys per device model, learned from the window's flows of fleet devices.

    Args:
        models: Device id -> device model.
        min_devices: Distinct devices of a model that must use a key for it to be the model's.
    """

    def __init__(self, models: Mapping[str, str], min_devices: int = 2) -> None:
        self.models = dict(models)
        self.min_devices = min_devices
        self._seen: dict[str, dict[int, set[str]]] = {}
        self._forgotten: set[str] = set()

    def copy(self) -> ModelPorts:
        out = ModelPorts(self.models, self.min_devices)
        out._seen = {m: {k: set(v) for k, v in keys.items()} for m, keys in self._seen.items()}
        out._forgotten = set(self._forgotten)
        return out

    def learn(self, devices: Iterable[str | None], keys: npt.NDArray[np.int64]) -> None:
        """Take rows (``devices``: each row's device id, ``None`` for a host that is not a device) and their keys."""
        # Each distinct (device, key) once, in order of first appearance (the key bound keeps the same keys).
        for device, key in dict.fromkeys(zip(devices, keys.tolist(), strict=True)):
            model = self.models.get(device) if device is not None else None
            if device is None or model is None or device in self._forgotten:
                continue
            seen = self._seen.setdefault(model, {})
            users = seen.get(key)
            if users is None:
                if len(seen) >= MAX_KEYS:
                    continue
                users = seen[key] = set()
            if len(users) < self.min_devices:
                users.add(device)

    def forget(self, devices: Iterable[str]) -> None:
        """Devices flagged while learning: what they used never counts, now or later."""
        gone = set(devices)
        self._forgotten |= gone
        for seen in self._seen.values():
            for users in seen.values():
                users -= gone

    def freeze(self) -> dict[str, frozenset[int]]:
        """Per model, the keys at least ``min_devices`` devices used."""
        out = {m: frozenset(k for k, users in seen.items() if len(users) >= self.min_devices)
               for m, seen in sorted(self._seen.items())}
        return {m: keys for m, keys in out.items() if keys}


def encode_model_ports(ports: Mapping[str, frozenset[int]]) -> dict[str, list[int]]:
    """A CBOR-ready form: model -> sorted keys."""
    return {m: sorted(keys) for m, keys in sorted(ports.items())}


def decode_model_ports(value: Any) -> dict[str, frozenset[int]]:
    """The inverse of :func:`encode_model_ports`, checked strictly.

    Raises:
        MalformedError: ``detector_state_bad_value``.
    """
    if not isinstance(value, dict) or len(value) > MAX_MODELS:
        raise MalformedError("learned flow baseline: model ports must be a map", code="detector_state_bad_value")
    out: dict[str, frozenset[int]] = {}
    for model, keys in value.items():
        if not isinstance(model, str) or not 0 < len(model) <= 128 or not model.isprintable() \
                or not isinstance(keys, list) or not 0 < len(keys) <= MAX_KEYS or keys != sorted(set(keys)) \
                or not all(type(k) is int and 0 <= k < 1 << 24 for k in keys):
            raise MalformedError("learned flow baseline: model ports must map a model to sorted distinct keys",
                                 code="detector_state_bad_value")
        out[model] = frozenset(keys)
    return out
