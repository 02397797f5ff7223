"""The learned flow baselines as strict canonical CBOR parts, to share them between hub processes (ADR 0752).

A fitted :class:`~iotguard.detection.scorer.BaselineScorer` is one *index*
part (the number of features, the names of the per-model and per-device
ensembles, and each device model's learned ports, ADR 0712; index version 2)
and one part per calibrated ensemble: its threshold, training
rows, held-out normalised scores and the autoencoders' trained parameters
(:meth:`~iotguard.detection.autoencoder.AutoencoderEnsemble.arrays`) as
little-endian ``float64`` byte strings whose exact lengths follow from the
feature subsets. Each part is at most :data:`MAX_MODEL_PART_BYTES`; every
shape, count and number is checked before an ensemble is rebuilt; never
pickle. A part that does not parse is refused with a ``detector_state_*``
reason code (the hub then learns its own baselines).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import cbor2
import numpy as np
import numpy.typing as npt

from iotguard.detection._cbor import decode_canonical_map, float64_array
from iotguard.detection.autoencoder import AutoencoderEnsemble
from iotguard.detection.model_ports import decode_model_ports, encode_model_ports
from iotguard.detection.scorer import ALL_MODELS, BaselineScorer, ScorerConfig, _Calibrated
from iotguard.errors import MalformedError

__all__ = ["INDEX_PART", "MAX_MODEL_PART_BYTES", "export_scorer", "import_scorer", "model_parts", "model_ports"]

#: Largest part (one calibrated ensemble, or the index).
MAX_MODEL_PART_BYTES: Final = 128 * 1024
#: Name of the index part.
INDEX_PART: Final = "index"
_VERSION: Final = 1
#: Version 2 carries the device models' ports; a version-1 index is refused (the process learns its own).
_INDEX_VERSION: Final = 2
_INDEX_KEYS: Final = frozenset({"v", "features", "models", "devices", "ports"})
_PART_KEYS: Final = frozenset({"v", "threshold", "rows", "held_out", "subsets", "lo", "span", "w1", "b1", "w2", "b2",
                               "err_lo", "err_span", "ow1", "ob1", "ow2", "ob2"})
_MAX_FEATURES, _MAX_HIDDEN, _MAX_HELD_OUT, _MAX_GROUPS = 1024, 64, 1 << 16, 10_000


def _fail(what: str) -> MalformedError:
    return MalformedError(f"learned flow baseline: {what}", code="detector_state_bad_value")


def _part_name(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def export_scorer(scorer: BaselineScorer, ports: Mapping[str, frozenset[int]] | None = None) -> dict[str, bytes]:
    """A fitted scorer's parts: :data:`INDEX_PART` (with the device models' ``ports``) and ``model:NAME`` /
    ``device:ID`` per ensemble.

    Raises:
        ConfigError: ``detection_not_fitted`` before the scorer was fitted.
    """
    groups = {"model": scorer._models, "device": scorer._devices}
    features = next(iter(scorer._models.values())).ensemble.arrays()["lo"].shape[0] if scorer._models else 0
    out = {INDEX_PART: bytes(cbor2.dumps({"v": _INDEX_VERSION, "features": features,
                                          "models": sorted(scorer._models), "devices": sorted(scorer._devices),
                                          "ports": encode_model_ports(ports or {})}, canonical=True))}
    for kind, members in groups.items():
        for name, calibrated in members.items():
            arrays = {k: np.ascontiguousarray(v, dtype="<f8").tobytes()
                      for k, v in calibrated.ensemble.arrays().items()}
            out[_part_name(kind, name)] = bytes(cbor2.dumps({
                "v": _VERSION, "threshold": float(calibrated.threshold), "rows": int(calibrated.rows),
                "held_out": np.ascontiguousarray(calibrated.held_out, dtype="<f8").tobytes(),
                "subsets": calibrated.ensemble.subsets, **arrays}, canonical=True))
    return out


def model_parts(index: bytes) -> list[str]:
    """The part names an index part lists (to load them).

    Raises:
        MalformedError: ``detector_state_*``.
    """
    return [_part_name(k, n) for k, n in _index(index)[1]]


def model_ports(index: bytes) -> dict[str, frozenset[int]]:
    """The device models' learned ports an index part carries.

    Raises:
        MalformedError: ``detector_state_*``.
    """
    return _index(index)[2]


def _names(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > _MAX_GROUPS or value != sorted(set(value)) or not all(
            isinstance(v, str) and 0 < len(v) <= 128 and v.isprintable() for v in value):
        raise _fail(f"{what} must be sorted distinct names")
    return value


def _index(data: bytes) -> tuple[int, list[tuple[str, str]], dict[str, frozenset[int]]]:
    body = decode_canonical_map(data, max_bytes=MAX_MODEL_PART_BYTES, keys=_INDEX_KEYS, version=_INDEX_VERSION,
                                prefix="detector_state", what="learned flow baseline index")
    features = body["features"]
    if type(features) is not int or not 0 < features <= _MAX_FEATURES:
        raise _fail("features out of range")
    models = _names(body["models"], "models")
    if ALL_MODELS not in models:
        raise _fail("no fallback model")
    groups = [("model", n) for n in models] + [("device", n) for n in _names(body["devices"], "devices")]
    return features, groups, decode_model_ports(body["ports"])


def _floats(body: dict[str, Any], key: str, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    return float64_array(body[key], shape, f"learned flow baseline: {key}")


def _calibrated(data: bytes, features: int, config: ScorerConfig) -> _Calibrated:
    body = decode_canonical_map(data, max_bytes=MAX_MODEL_PART_BYTES, keys=_PART_KEYS, version=_VERSION,
                                prefix="detector_state", what="learned flow baseline")
    subsets = body["subsets"]
    if not isinstance(subsets, list) or not subsets or not all(
            isinstance(s, list) and 0 < len(s) <= 64 and all(type(c) is int for c in s) for s in subsets) \
            or sorted(c for s in subsets for c in s) != list(range(features)):
        raise _fail("subsets must partition the feature columns")
    k, m = len(subsets), max(len(s) for s in subsets)
    h = len(body["w1"]) // (8 * k * m) if isinstance(body["w1"], bytes) else 0
    ho = len(body["ow1"]) // (8 * k) if isinstance(body["ow1"], bytes) else 0
    if not 0 < h <= _MAX_HIDDEN or not 0 < ho <= _MAX_HIDDEN:
        raise _fail("hidden layer sizes out of range")
    held = body["held_out"]
    n_held = len(held) // 8 if isinstance(held, bytes) else -1
    threshold, rows = body["threshold"], body["rows"]
    if type(threshold) is not float or not 0 < threshold < math.inf or type(rows) is not int or \
            not 0 < rows < 1 << 40 or not 0 < n_held <= _MAX_HELD_OUT:
        raise _fail("threshold, rows or held-out scores out of range")
    arrays = {"lo": _floats(body, "lo", (features,)), "span": _floats(body, "span", (features,)),
              "w1": _floats(body, "w1", (k, m, h)), "b1": _floats(body, "b1", (k, 1, h)),
              "w2": _floats(body, "w2", (k, h, m)), "b2": _floats(body, "b2", (k, 1, m)),
              "err_lo": _floats(body, "err_lo", (k,)), "err_span": _floats(body, "err_span", (k,)),
              "ow1": _floats(body, "ow1", (1, k, ho)), "ob1": _floats(body, "ob1", (1, 1, ho)),
              "ow2": _floats(body, "ow2", (1, ho, k)), "ob2": _floats(body, "ob2", (1, 1, k))}
    if (arrays["span"] <= 0).any() or (arrays["err_span"] <= 0).any():
        raise _fail("scaling spans must be positive")
    held_out = _floats(body, "held_out", (n_held,))
    if (np.diff(held_out) < 0).any():
        raise _fail("held-out scores must be sorted")
    ensemble = AutoencoderEnsemble.from_arrays(config.autoencoder, subsets, arrays)
    return _Calibrated(ensemble, threshold, rows, held_out)


def import_scorer(config: ScorerConfig, parts: Mapping[str, bytes]) -> BaselineScorer:
    """A scorer that scores as the one :func:`export_scorer` exported into ``parts``.

    Raises:
        MalformedError: ``detector_state_*`` (a part missing, too large, not canonical, a bad shape or number).
    """
    if INDEX_PART not in parts:
        raise MalformedError("learned flow baseline: no index", code="detector_state_missing")
    features, groups, _ = _index(parts[INDEX_PART])
    scorer = BaselineScorer(config)
    for kind, name in groups:
        data = parts.get(_part_name(kind, name))
        if data is None:
            raise MalformedError(f"learned flow baseline: part {kind}:{name} missing", code="detector_state_missing")
        (scorer._models if kind == "model" else scorer._devices)[name] = _calibrated(data, features, config)
    scorer._device_names = np.array(sorted(scorer._devices), dtype=np.str_)
    return scorer
