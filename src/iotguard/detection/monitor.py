"""Streaming flow monitoring: learn from the first traffic, then score; and the address inventory.

:class:`FlowMonitor` is what the hub runs over the flows sensors report: the
first flows train the learned baselines, at least ``learn_flows`` of them
spanning at least ``learn_s`` seconds of flow time (two hours by default, so
that every damped statistic settles and slow devices are seen many times,
ADR 0710; the window's rows are thinned to an even sample of
``max_window_rows``) (while the rules that need no baseline, scan fan-out and known-bad
addresses, already alert, and an address they flag is never learned as
normal: :meth:`~iotguard.detection.pipeline.FlowDetector.learn_watching`),
every later batch is scored by the whole
:class:`~iotguard.detection.pipeline.FlowDetector`, where a device with
fewer than ``min_flows`` learned flows (enrolled after the window, or
reporting rarely) goes on learning its new-port and beaconing baselines
under the same guard until it has them
(:func:`~iotguard.detection.pipeline.learn_unjudged`, ADR 0709). Flows within a report
are put in time order; a report older than what was seen still updates the
damped statistics correctly (a negative gap counts as zero).

:func:`parse_address_inventory` reads the operator's map from network
address to device id (``<address> <device_id>`` per line, ``#`` comments),
which names the device behind a flow's originator.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from iotguard.detection.alert import Alert
from iotguard.detection.feed import ThreatFeed
from iotguard.detection.flows import FlowBatch
from iotguard.detection.geo import CountryDatabase
from iotguard.detection.pipeline import DetectorConfig, FlowDetector
from iotguard.errors import ConfigError

__all__ = ["FlowMonitor", "MonitorConfig", "parse_address_inventory"]

_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Largest address inventory file (about 100,000 lines).
MAX_INVENTORY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class MonitorConfig:
    """Settings of the streaming monitor.

    Attributes:
        detector: The flow detector's settings.
        learn_flows: Flows learned from before the learned baselines score
            (at least the scorer's ``min_model_rows``) ...
        learn_s: ... over at least this many seconds of flow time (from the
            first flow learned to the last), so the damped statistics (ten-minute
            half-lives, the one-hour host age) have settled in what is learned
            and a device that reports rarely is seen many times (ADR 0710).
            0 closes the window after ``learn_flows`` flows alone.
        max_window_rows: Rows the window holds at most for the learned
            baselines; beyond it they are thinned to an even sample of the
            window's whole time (memory stays bounded whatever the fleet size).
    """

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    learn_flows: int = 2000
    learn_s: float = 7200.0
    max_window_rows: int = 200_000

    def __post_init__(self) -> None:
        if not self.detector.scorer.min_model_rows <= self.learn_flows <= 5_000_000:
            raise ConfigError("learn_flows below the scorer's min_model_rows or above 5 million",
                              code="detection_config_invalid")
        if not 0 <= self.learn_s <= 30 * 86400:
            raise ConfigError("learn_s must be between 0 and 30 days", code="detection_config_invalid")
        if not max(self.learn_flows, 1000) <= self.max_window_rows <= 10_000_000:
            raise ConfigError("max_window_rows below learn_flows (or 1000) or above 10 million",
                              code="detection_config_invalid")


class FlowMonitor:
    """Learn-then-score over a stream of flow batches (not thread-safe: the caller serialises).

    Args:
        config: Settings.
        devices: Address -> device id (from the address inventory).
        models: Device id -> device model.
        feed: Known-bad addresses.
        countries: A country database for the ``new_country`` rule.
    """

    def __init__(self, config: MonitorConfig | None = None, *, devices: Mapping[str, str] | None = None,
                 models: Mapping[str, str] | None = None, feed: ThreatFeed | None = None,
                 countries: CountryDatabase | None = None) -> None:
        self.config = config or MonitorConfig()
        self.detector = FlowDetector(self.config.detector, devices=devices, models=models, feed=feed,
                                     countries=countries)
        self.flows_seen = 0

    def set_feed(self, feed: ThreatFeed | None) -> None:
        """Match flows against ``feed`` from the next batch on (``None``: no known-bad address rule)."""
        self.detector.set_feed(feed)

    @property
    def learning(self) -> bool:
        """Whether the learned baselines are still being learned."""
        return not self.detector.fitted

    def observe(self, batch: FlowBatch) -> list[Alert]:
        """Alerts for the next batch of flows."""
        if len(batch) == 0:
            return []
        batch = batch.take(batch.time_order())
        self.flows_seen += len(batch)
        if self.detector.fitted:
            return self.detector.process(batch)
        alerts = self.detector.learn_watching(batch)
        self.detector.thin_window(self.config.max_window_rows)
        # A window that only saw flagged traffic keeps learning until enough clean rows came in.
        if self.detector.ready_to_finish(self.config.learn_flows, self.config.learn_s):
            self.detector.finish_learning()
        return alerts


def parse_address_inventory(data: bytes) -> dict[str, str]:
    """Parse an address inventory: ``<address> <device_id>`` per line, blank lines and ``#`` comments.

    Every line is checked (an IP address, a device id, an address named
    once), so an inventory never half-loads.

    Raises:
        ConfigError: ``inventory_invalid`` naming the line.
    """
    if len(data) > MAX_INVENTORY_BYTES:
        raise ConfigError("address inventory too large", code="inventory_invalid")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("address inventory is not UTF-8", code="inventory_invalid") from None
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not _DEVICE_ID.fullmatch(parts[1]):
            raise ConfigError(f"address inventory line {number}: expected '<address> <device_id>'",
                              code="inventory_invalid")
        try:
            address = str(ipaddress.ip_address(parts[0]))
        except ValueError:
            raise ConfigError(f"address inventory line {number}: not an IP address", code="inventory_invalid") \
                from None
        if address in out:
            raise ConfigError(f"address inventory line {number}: {address} named twice", code="inventory_invalid")
        out[address] = parts[1]
    return out
