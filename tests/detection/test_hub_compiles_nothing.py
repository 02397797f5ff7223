"""The hub keeps the NumPy paths unless ``hub.detection_compiled`` (ADR 0705): its flow monitor is built inside
the first flow report, so a compile there (a few CPU seconds, far more on a loaded machine) would stall that
request past the sensor's timeout. The rules' compiled passes follow the same setting."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_hubs_default_flow_monitor_loads_no_compiler_through_its_first_report() -> None:
    code = textwrap.dedent("""
        import sys
        from iotguard.detection import FlowBatch, FlowMonitor
        from iotguard.config import HubConfig
        from iotguard.hub.compose import _monitor_config
        from iotguard.sim import traffic
        fleet = traffic.make_fleet(per_model=2, segments=1)
        monitor = FlowMonitor(_monitor_config(HubConfig()), devices={d.address: d.device_id for d in fleet},
                              models={d.device_id: d.model for d in fleet})
        monitor.observe(FlowBatch.from_flows(traffic.benign_traffic(fleet, 1.7e9, 600.0).flows))
        print("numba" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
