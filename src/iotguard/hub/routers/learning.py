"""Federated-learning routes: a device's ``learn_task`` and ``learn_update`` signed requests (no logic here)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Depends

from iotguard.hub.device_plane import DevicePlane, device_request, signed_request_openapi
from iotguard.hub.services.learning import LearningService
from iotguard.hub.services.models import ModelService
from iotguard.identity import VerifiedRequest
from iotguard.learn.model import flatten

__all__ = ["learning_router"]


def learning_router(learning: LearningService, models: ModelService, plane: DevicePlane) -> APIRouter:
    """Routes a device uses to take part in a training run."""
    router = APIRouter(tags=["learning"])

    @router.post("/v1/learn/task", openapi_extra=signed_request_openapi("learn_task"))
    def task(req: VerifiedRequest = Depends(device_request(plane, "learn_task"))) -> dict[str, Any]:  # noqa: B008
        """The run's current model (float64, base64) and the round's settings (compression negotiated); in a secure
        FedBuff run (``buffered``) whether the device's ready update waits for a buffer (``buffering``) or, for a
        member of the bound round, its base version and staleness weight."""
        accepts = req.body.get("accepts")
        t = learning.task(str(req.body["run_id"]), req.device_id, None if accepts is None else set(accepts),
                          int(req.body.get("max_update_bytes", 0)), int(req.body.get("ready", 0)))
        rc = t.round_config
        model = learning.model_of(t.run_id)
        return {"run_id": t.run_id, "version": t.version, "model_name": learning.model_name_of(t.run_id),
                "model": {"features": model.features, "classes": model.classes, "hidden": model.hidden},
                "parameters": base64.b64encode(flatten(t.parameters).astype("<f8").tobytes()).decode(),
                "fit": dict(rc.fit), "clip_norm": rc.clip_norm, "compression": rc.compression.scheme,
                "topk_fraction": rc.compression.topk_fraction,
                "secure": None if t.plan is None else {"round": t.secure_round, **t.plan.to_dict()}
                | ({"base_version": t.base_version, "weight": t.staleness_weight} if t.buffered else {}),
                "buffered": t.buffered, "buffering": t.buffering}

    @router.post("/v1/learn/update", openapi_extra=signed_request_openapi("learn_update"))
    def update(req: VerifiedRequest = Depends(device_request(plane, "learn_update"))) -> dict[str, Any]:  # noqa: B008
        """Take an encoded model update; the run's version and status after it."""
        b = req.body
        run = learning.submit(str(b["run_id"]), req.device_id, int(b["base_version"]), bytes(b["update"]),
                              int(b["num_examples"]))
        return {"run_id": run.run_id, "version": run.version, "status": run.status}

    @router.post("/v1/learn/model", openapi_extra=signed_request_openapi("learn_model"))
    def model(req: VerifiedRequest = Depends(device_request(plane, "learn_model"))) -> dict[str, Any]:  # noqa: B008
        """A published model's signed artifact, the hub's model key and the fleet CA's endorsement of it."""
        version = int(req.body["version"])
        record = models.get(str(req.body["name"]), version or None)
        return {"name": record.name, "version": record.version,
                "artifact": base64.b64encode(record.artifact).decode(),
                "signing_key": base64.b64encode(models.signing_key()).decode(),
                "endorsement": base64.b64encode(models.endorsement()).decode()}

    return router
