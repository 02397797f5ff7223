"""Fleet simulator: sensor models, virtual devices and attack hooks."""

from iotguard.sim.delivery import DeliveryReport, ReadingSource, reading_identity, reconcile, stored_identities
from iotguard.sim.fleet import ATTACKS, Fleet, VirtualDevice
from iotguard.sim.sensors import MODELS, SensorModel, make_sensor

__all__ = [
    "ATTACKS",
    "MODELS",
    "DeliveryReport",
    "Fleet",
    "ReadingSource",
    "SensorModel",
    "VirtualDevice",
    "make_sensor",
    "reading_identity",
    "reconcile",
    "stored_identities",
]
