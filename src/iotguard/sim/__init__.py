"""Fleet simulator: sensor models, virtual devices and attack hooks."""

from iotguard.sim.fleet import ATTACKS, Fleet, VirtualDevice
from iotguard.sim.sensors import MODELS, SensorModel, make_sensor

__all__ = ["ATTACKS", "MODELS", "Fleet", "SensorModel", "VirtualDevice", "make_sensor"]
