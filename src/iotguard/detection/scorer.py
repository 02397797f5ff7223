"""Per-device learned baselines with a per-model fallback, calibrated to a target FPR.

A device with enough benign training rows gets its own
:class:`~iotguard.detection.autoencoder.AutoencoderEnsemble`; every other
device is scored by the ensemble of its model (device type), and a device
of a model never seen in training by the ensemble of all rows. Each
ensemble's threshold is the ``1 - target_fpr`` quantile of its scores on
held-out benign rows (the chronologically last ``calibration_share`` of its
training rows), and scores are reported divided by that threshold: a
*normalised* score above 1 is an alert, whichever model produced it.

Dividing by a threshold puts every model's alert line at 1 but not its
tail on one scale: a model calibrated on six held-out rows and one
calibrated on a thousand both say "2" for very different surprises. For
ranking rows of many models together (pooled evaluation, fleet-wide
triage), :meth:`BaselineScorer.surprise` reports ``-log10`` of each row's
conformal tail probability among its model's held-out benign scores,
``(1 + #{held-out >= s}) / (1 + held-out rows)``: a model can claim no more
surprise than its calibration set supports, and for every model the same
value means the same benign tail mass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from iotguard.detection.autoencoder import AutoencoderConfig, AutoencoderEnsemble
from iotguard.errors import ConfigError

__all__ = ["ALL_MODELS", "BaselineScorer", "ScorerConfig"]

FloatArray = npt.NDArray[np.float64]
#: Group name of the fallback ensemble fitted on every training row.
ALL_MODELS = "*"


@dataclass(frozen=True)
class ScorerConfig:
    """Baseline settings.

    Attributes:
        target_fpr: False-positive rate the thresholds are calibrated to.
        calibration_share: Last share of each model's training rows held out for calibration.
        min_device_rows: Training rows a device needs for a model of its own.
        min_model_rows: Training rows a device model needs for a model of its own.
        max_device_models: Devices with their own model at most (the busiest win).
        autoencoder: Ensemble training settings.
    """

    target_fpr: float = 0.01
    calibration_share: float = 0.25
    min_device_rows: int = 400
    min_model_rows: int = 16
    max_device_models: int = 1000
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)

    def __post_init__(self) -> None:
        if not 0 < self.target_fpr < 0.5 or not 0.05 <= self.calibration_share <= 0.5:
            raise ConfigError("target_fpr or calibration_share out of range", code="detection_config_invalid")
        if self.min_device_rows < 32 or self.min_model_rows < 16:
            raise ConfigError("too few rows per model", code="detection_config_invalid")


@dataclass(frozen=True)
class _Calibrated:
    ensemble: AutoencoderEnsemble
    threshold: float
    rows: int
    #: Normalised scores (score / threshold) of the held-out benign rows, sorted.
    held_out: FloatArray

    def surprise(self, normalised: FloatArray) -> FloatArray:
        """``-log10`` of the conformal tail probability, ties within a level broken by the normalised score.

        The tie-break adds less than half the smallest gap between two
        levels, so the result is non-decreasing in ``normalised``.
        """
        n = self.held_out.shape[0]
        above = n - np.searchsorted(self.held_out, normalised, side="left")
        level = -np.log10((1.0 + above) / (1.0 + n))
        tie = 0.5 * np.log10((n + 1.0) / max(n, 1)) * normalised / (1.0 + np.abs(normalised))
        out: FloatArray = level + tie
        return out


class BaselineScorer:
    """Fit per-device and per-model baselines on benign rows; score rows of any device.

    Args:
        config: Calibration and training settings.
    """

    def __init__(self, config: ScorerConfig | None = None) -> None:
        self.config = config or ScorerConfig()
        self._devices: dict[str, _Calibrated] = {}
        self._models: dict[str, _Calibrated] = {}
        self._device_names = np.array([], dtype=np.str_)

    @property
    def device_models(self) -> int:
        """Devices scored by a model of their own."""
        return len(self._devices)

    def thresholds(self) -> dict[str, float]:
        """Raw-score threshold of every fitted model (``device:ID``, ``model:NAME``)."""
        out = {f"device:{k}": v.threshold for k, v in self._devices.items()}
        out.update({f"model:{k}": v.threshold for k, v in self._models.items()})
        return out

    def _calibrated(self, x: FloatArray) -> _Calibrated:
        split = round(x.shape[0] * (1 - self.config.calibration_share))
        ensemble = AutoencoderEnsemble(self.config.autoencoder).fit(x[:split])
        held_out = ensemble.score(x[split:])
        threshold = max(float(np.quantile(held_out, 1 - self.config.target_fpr, method="higher")), 1e-9)
        return _Calibrated(ensemble, threshold, x.shape[0], np.sort(held_out / threshold))

    def fit(self, x: FloatArray, device: npt.NDArray[np.str_], model: npt.NDArray[np.str_] | None = None) -> None:
        """Learn baselines from benign rows in time order.

        Args:
            x: Feature rows ``(n, features)``, oldest first.
            device: Device (host) of each row.
            model: Device model of each row (``None``: all one model).

        Raises:
            ConfigError: ``detection_too_few_rows`` if there are fewer than
                ``min_model_rows`` rows in all.
        """
        if x.shape[0] < self.config.min_model_rows:
            raise ConfigError(f"{x.shape[0]} benign training rows; need {self.config.min_model_rows}",
                              code="detection_too_few_rows")
        model = model if model is not None else np.full(x.shape[0], ALL_MODELS)
        self._models = {ALL_MODELS: self._calibrated(x)}
        names, counts = np.unique(model, return_counts=True)
        for name, count in zip(names.tolist(), counts.tolist(), strict=True):
            if name != ALL_MODELS and count >= self.config.min_model_rows:
                self._models[name] = self._calibrated(x[model == name])
        names, counts = np.unique(device, return_counts=True)
        busiest = np.argsort(-counts, kind="stable")[: self.config.max_device_models]
        self._devices = {}
        for i in busiest.tolist():
            if counts[i] >= self.config.min_device_rows:
                self._devices[str(names[i])] = self._calibrated(x[device == names[i]])
        self._device_names = np.array(sorted(self._devices), dtype=np.str_)

    def explain(self, row: FloatArray, device: str, model: str | None = None) -> list[int]:
        """Feature columns that make ``row`` (one row, of ``device``) anomalous for the model that scores it.

        Raises:
            ConfigError: ``detection_not_fitted`` before :meth:`fit`.
        """
        if not self._models:
            raise ConfigError("baseline scorer used before fit", code="detection_not_fitted")
        chosen = self._devices.get(device) or (self._models.get(model) if model is not None else None)
        return (chosen or self._models[ALL_MODELS]).ensemble.worst_subset(row.reshape(1, -1))

    def _routes(self, device: npt.NDArray[np.str_],
                model: npt.NDArray[np.str_] | None) -> list[tuple[_Calibrated, npt.NDArray[np.intp] | slice]]:
        """The model that scores each row: the device's own, else its device model's, else the fallback.

        When one model scores every row its rows are a slice, so scoring reads ``x`` without a copy.
        """
        if not self._models:
            raise ConfigError("baseline scorer used before fit", code="detection_not_fitted")
        if not self._devices and (model is None or len(self._models) == 1):
            return [(self._models[ALL_MODELS], slice(None))]
        routes: list[tuple[_Calibrated, npt.NDArray[np.intp] | slice]] = []
        done = np.zeros(device.shape[0], dtype=bool)
        if self._devices:
            own = np.flatnonzero(np.isin(device, self._device_names))
            if own.size:
                names, inverse = np.unique(device[own], return_inverse=True)
                for j, name in enumerate(names.tolist()):
                    rows = own[inverse == j]
                    routes.append((self._devices[name], rows))
                    done[rows] = True
        if model is not None and len(self._models) > 1:
            rest = ~done
            for name in np.unique(model[rest]).tolist():
                calibrated = self._models.get(name)
                if calibrated is not None and name != ALL_MODELS:
                    rows_mask = rest & (model == name)
                    routes.append((calibrated, np.flatnonzero(rows_mask)))
                    done |= rows_mask
        rest_rows = np.flatnonzero(~done)
        if rest_rows.size:
            routes.append((self._models[ALL_MODELS], rest_rows))
        return routes

    def score(self, x: FloatArray, device: npt.NDArray[np.str_],
              model: npt.NDArray[np.str_] | None = None) -> FloatArray:
        """Normalised anomaly score of each row (above 1 means above its model's threshold).

        Raises:
            ConfigError: ``detection_not_fitted`` before :meth:`fit`.
        """
        out = np.empty(x.shape[0])
        for calibrated, rows in self._routes(device, model):
            out[rows] = calibrated.ensemble.score(x[rows]) / calibrated.threshold
        return out

    def surprise(self, x: FloatArray, device: npt.NDArray[np.str_],
                 model: npt.NDArray[np.str_] | None = None) -> FloatArray:
        """Each row's score on one scale for every model (see the module docstring); higher is more anomalous.

        ``-log10`` of the row's conformal tail probability among its model's
        held-out benign rows (2 means: 1 % of that model's benign rows score
        as high). Within one model it orders rows as :meth:`score` does.

        Raises:
            ConfigError: ``detection_not_fitted`` before :meth:`fit`.
        """
        out = np.empty(x.shape[0])
        for calibrated, rows in self._routes(device, model):
            out[rows] = calibrated.surprise(calibrated.ensemble.score(x[rows]) / calibrated.threshold)
        return out
