"""The playbook's ``reattest`` and ``rollback`` steps, carried out through the attestation and rollout services.

* ``reattest`` -- :meth:`AttestationService.queue_challenge`: a fresh single-use
  nonce is stored and the challenge queued through the outbox for the device's
  ``cmd`` topic (sent by the hub process connected to the broker); the
  appraisal of its answer updates the posture, and a clean one releases a
  playbook quarantine (``auto_release``).
* ``rollback`` -- :class:`FirmwareRollback`: the rollout that offered the
  device the release it runs is aborted through :meth:`RolloutService.abort`
  (audited ``rollout.aborted`` by ``hub.detection``), so no further device is
  offered that release and none that rolled back is offered it again. The
  device itself is not moved below its anti-rollback counter: it refuses any
  older release by design, and the way back for it is a new release carrying
  the earlier image, signed with the model's offline key (docs/updates.md).
"""

from __future__ import annotations

from iotguard.errors import IotGuardError
from iotguard.hub.services.rollouts import RolloutService
from iotguard.hub.stores.devices import DeviceStore
from iotguard.hub.stores.rollouts import OFFERED
from iotguard.rollout import RolloutState

__all__ = ["FirmwareRollback"]

#: Report outcomes that mean a campaign's release reached the device (offered to it, or committed by it).
_REACHED = frozenset({OFFERED, "committed"})


class FirmwareRollback:
    """Stops the rollout whose release the device received (a callable for ``DetectionService(rollback=...)``).

    Args:
        rollouts: The rollout service.
        devices: The device registry (the device's model).
    """

    def __init__(self, rollouts: RolloutService, devices: DeviceStore) -> None:
        self.rollouts = rollouts
        self.devices = devices

    def __call__(self, device_id: str, *, actor: str, reason: str) -> str:
        """Abort the newest campaign of the device's model that reached it; returns its id.

        Raises:
            IotGuardError: ``rollback_no_rollout`` (no campaign reached the device) or ``rollback_finished`` (the
                campaign completed or was aborted already: nothing left to stop); UnknownDeviceError.
        """
        model = self.devices.get_device(device_id).model
        reached = [c for c in self.rollouts.store.campaigns()
                   if c.model == model and (r := self.rollouts.store.report_of(c.rollout_id, device_id)) is not None
                   and r.outcome in _REACHED]
        if not reached:
            raise IotGuardError(f"no rollout reached {device_id}", code="rollback_no_rollout")
        campaign = max(reached, key=lambda c: (c.version, c.rollout_id))
        if campaign.state not in (RolloutState.RUNNING, RolloutState.PAUSED):
            raise IotGuardError(f"rollout {campaign.rollout_id} is {campaign.state}", code="rollback_finished")
        self.rollouts.abort(campaign.rollout_id, actor=actor, reason=f"detection rollback: {reason}")
        return campaign.rollout_id
