"""The hub process: its services plus their threads (broker, ingest, API, maintenance)."""

from __future__ import annotations

import gc
import logging
import os
import threading

import uvicorn

from iotguard.clock import Clock
from iotguard.config import HubConfig
from iotguard.hub.api import create_app
from iotguard.hub.broker import BrokerAddress, EmbeddedBroker, parse_broker_url, wait_for_port
from iotguard.hub.compose import HubServices, Maintenance, build_hub_services
from iotguard.hub.mqtt_ingest import MqttIngest

__all__ = ["Hub", "tune_gc_for_ingest"]

log = logging.getLogger(__name__)


def tune_gc_for_ingest() -> None:
    """Tune the garbage collector for a long-running ingest process.

    Ingest allocates many short-lived objects per batch while the process also
    holds a large, long-lived heap (policy entities, SQLAlchemy metadata,
    caches). With CPython's default thresholds the collector runs every 700
    allocations and, in this workload, costs about a third of the time per
    message (bench/ingest.py). Startup objects are frozen out of collection
    and young-generation collections run every 50,000 allocations instead.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


class Hub:
    """One hub process.

    Args:
        cfg: Hub settings.
        clock: Injected clock (tests); the system clock by default.
    """

    def __init__(self, cfg: HubConfig, *, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.services: HubServices = build_hub_services(cfg, clock=clock)
        self.store = self.services.store
        self.lifecycle = self.services.lifecycle
        self.processor = self.services.processor
        self.maintenance = Maintenance(self.services, worker=f"hub-{os.getpid()}")
        self.app = create_app(self.services, drain=self.maintenance.drainer.drain)
        self.embedded_broker: EmbeddedBroker | None = None
        self.ingest: MqttIngest | None = None
        self._api_server: uvicorn.Server | None = None
        self._api_thread: threading.Thread | None = None

    @property
    def broker_address(self) -> BrokerAddress:
        if self.cfg.broker_url:
            return parse_broker_url(self.cfg.broker_url)
        host, _, port = self.cfg.embedded_broker_bind.rpartition(":")
        return BrokerAddress(host, int(port))

    @property
    def api_url(self) -> str:
        return f"http://{self.cfg.api_bind}"

    def start(self, *, api: bool = True) -> None:
        """Start the embedded broker (if no broker URL is set), ingest, maintenance and the API."""
        tune_gc_for_ingest()
        if not self.cfg.broker_url:
            self.embedded_broker = EmbeddedBroker(self.cfg.embedded_broker_bind)
            self.embedded_broker.start()
            log.info("embedded MQTT broker on %s", self.embedded_broker.address.url)
        # The embedded broker does not support shared subscriptions; one hub uses it.
        self.ingest = MqttIngest(self.processor, self.broker_address, self.cfg,
                                 shared=self.cfg.shared_subscription and bool(self.cfg.broker_url))
        self.ingest.start()
        self.services.commands.attach(self.ingest.publish)
        self.maintenance.tick()
        self.maintenance.start()
        if api:
            host, _, port = self.cfg.api_bind.rpartition(":")
            config = uvicorn.Config(self.app, host=host, port=int(port), log_level="warning",
                                    access_log=False, lifespan="off")
            self._api_server = uvicorn.Server(config)
            self._api_thread = threading.Thread(target=self._api_server.run, name="iotguard-api", daemon=True)
            self._api_thread.start()
            wait_for_port(host, int(port), timeout=15)

    def stop(self) -> None:
        """Stop accepting, finish the batch in progress, shut everything down."""
        if self._api_server is not None:
            self._api_server.should_exit = True
            if self._api_thread is not None:
                self._api_thread.join(timeout=10)
        self.maintenance.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self.embedded_broker is not None:
            self.embedded_broker.stop()
        self.store.engine.dispose()
