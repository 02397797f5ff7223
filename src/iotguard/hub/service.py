"""The hub process: its services plus their threads (broker, ingest, API, maintenance, TLS upkeep).

Every hop is mutual TLS 1.3 by default: the embedded broker's front requires
fleet-CA client certificates, the hub's MQTT client presents its own
(``iotguard-hub``) and verifies the broker, and the API serves HTTPS with a
certificate from the fleet CA. ``hub.unsafe_plaintext_broker`` and
``hub.unsafe_plain_http`` turn these off, loudly.
"""

from __future__ import annotations

import gc
import logging
import os
import ssl
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn

from iotguard.admission import QuotaLimits
from iotguard.clock import Clock
from iotguard.config import HubConfig
from iotguard.errors import ConfigError
from iotguard.hub.api import create_app
from iotguard.hub.broker import BrokerAddress, EmbeddedBroker, parse_broker_url, wait_for_port
from iotguard.hub.broker_front import BrokerAccess
from iotguard.hub.compose import HubServices, Maintenance, build_hub_services
from iotguard.hub.device_tls import accept_device_certificates
from iotguard.hub.mosquitto import reload, revoked_serials, update_access_files
from iotguard.hub.mqtt_frames import AccessList
from iotguard.hub.mqtt_ingest import MqttIngest
from iotguard.hub.repository_front import RepositoryFront
from iotguard.hub.services.posture import HUB_MQTT_GRANTS
from iotguard.hub.tls import HUB_MQTT_IDENTITY, HubTls, add_browser_certificate
from iotguard.policy.acl import derive_device_acl
from iotguard.tls import client_context, server_context

__all__ = ["Hub", "tune_gc_for_ingest"]

log = logging.getLogger(__name__)
#: How long a stopping hub lets requests in flight finish. Idle keep-alive TLS connections would otherwise hold
#: the API listener open until its thread's join timed out (10 s); a cut request is retried by its device.
_GRACEFUL_SHUTDOWN_S = 2


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
        self.embedded_broker: EmbeddedBroker | None = None
        self.ingest: MqttIngest | None = None
        self.maintenance = Maintenance(self.services, worker=f"hub-{os.getpid()}")
        self.services.detection.after_containment = self.maintenance.wake
        self.app = create_app(self.services, drain=self.maintenance.drainer.drain)
        #: What the API listener serves: repository reads in front of the API application (ADR 1220).
        self.asgi: Any = self.app if self.services.repository_reads is None else \
            RepositoryFront(self.app, self.services.repository_reads)
        self.tls = HubTls(Path(cfg.data_dir), self.lifecycle.ca,
                          client_validity=timedelta(days=cfg.cert_validity_days))
        self._api_server: uvicorn.Server | None = None
        self._api_thread: threading.Thread | None = None
        self._upkeep_stop = threading.Event()
        self._upkeep_thread: threading.Thread | None = None
        # The embedded broker's device grants, recomputed per device as postures change.
        self._acl_lock = threading.Lock()
        self._acl_dirty: set[str] = set()
        self._acl_full = True
        self._device_grants: dict[str, list[tuple[str, str]]] | None = None
        self.services.posture.posture.add_listener(self._posture_changed)

    @property
    def broker_address(self) -> BrokerAddress:
        if self.cfg.broker_url:
            return parse_broker_url(self.cfg.broker_url)
        host, _, port = self.cfg.embedded_broker_bind.rpartition(":")
        return BrokerAddress(host, int(port), tls=not self.cfg.unsafe_plaintext_broker)

    @property
    def api_url(self) -> str:
        return f"{'http' if self.cfg.unsafe_plain_http else 'https'}://{self.cfg.api_bind}"

    @property
    def ca_file(self) -> Path:
        """The fleet CA certificate clients verify the API and the broker against."""
        return self.tls.ca_file

    def _names(self, bind: str, extra: list[str]) -> list[str]:
        host = bind.rpartition(":")[0].strip("[]")
        return list(dict.fromkeys([host, *extra]))

    def _ensure_tls(self) -> bool:
        now = self.services.clock.now()
        api = [] if self.cfg.unsafe_plain_http else self._names(self.cfg.api_bind, self.cfg.api_hostnames)
        broker = [] if self.cfg.broker_url or self.cfg.unsafe_plaintext_broker else \
            self._names(self.cfg.embedded_broker_bind, ["localhost", "127.0.0.1"])
        return self.tls.ensure(now, api_names=api, broker_names=broker)

    def broker_access(self) -> BrokerAccess:
        """What the embedded broker's front enforces now: CRL, Cedar-derived grants, revoked serials.

        Raises:
            ConfigError: a device id collides with the hub's MQTT identity.
        """
        now = self.services.clock.now()
        revoked = revoked_serials(self.store)
        context = server_context(self.tls.broker_file, client_cafile=self.tls.ca_file,
                                 crlfile=self.tls.write_crl(revoked, now))
        with self._acl_lock:
            dirty, self._acl_dirty = self._acl_dirty, set()
            full, self._acl_full = self._acl_full or self._device_grants is None, False
        policy = self.services.posture.engine
        if full:
            grants = dict(derive_device_acl(policy, now=now))
        else:
            # Only the devices whose posture changed: an enrollment costs one device's decisions.
            grants = dict(self._device_grants or {})
            fresh = derive_device_acl(policy, now=now, device_ids=dirty)
            for device_id in dirty:
                grants.pop(device_id, None)
            grants.update(fresh)
        self._device_grants = grants
        if HUB_MQTT_IDENTITY in grants:
            raise ConfigError(f"a device is named {HUB_MQTT_IDENTITY!r}, the hub's MQTT identity")
        return BrokerAccess(context, AccessList({**grants, HUB_MQTT_IDENTITY: list(HUB_MQTT_GRANTS)}),
                            frozenset(serial for serial, _ in revoked))

    def _posture_changed(self, device_id: str) -> None:
        with self._acl_lock:
            self._acl_dirty.add(device_id)

    def start(self, *, api: bool = True) -> None:
        """Start the embedded broker (if no broker URL is set), ingest, maintenance and the API."""
        tune_gc_for_ingest()
        self._ensure_tls()
        address = self.broker_address
        if not address.tls and not self.cfg.unsafe_plaintext_broker:
            raise ConfigError(f"broker URL {address.url} is not mqtts:// (hub.unsafe_plaintext_broker is off)")
        if not address.tls:
            log.warning("UNSAFE: the hub connects to the MQTT broker %s WITHOUT TLS (unsafe_plaintext_broker)",
                        address.url)
        if not self.cfg.broker_url:
            self.embedded_broker = EmbeddedBroker(
                self.cfg.embedded_broker_bind, unsafe_plaintext=self.cfg.unsafe_plaintext_broker,
                access=None if self.cfg.unsafe_plaintext_broker else self.broker_access,
                publish_quota=QuotaLimits(self.cfg.broker_publish_rate, self.cfg.broker_publish_burst))
            self.embedded_broker.start()
            # Enrollment, revocation, renewal: the broker's access follows before the request returns.
            self.services.broker_link.attach(self._registry_changed)
            log.info("embedded MQTT broker on %s", self.embedded_broker.address.url)
        tls = client_context(self.tls.ca_file, certfile=self.tls.hub_mqtt_file) if address.tls else None
        # The embedded broker does not support shared subscriptions; one hub uses it.
        self.ingest = MqttIngest(self.processor, address, self.cfg, tls=tls,
                                 shared=self.cfg.shared_subscription and bool(self.cfg.broker_url))
        self.ingest.start()
        self.services.commands.attach(self.ingest.publish)
        self.maintenance.tick()
        self.maintenance.start()
        self._upkeep_thread = threading.Thread(target=self._upkeep, name="iotguard-tls-upkeep", daemon=True)
        self._upkeep_thread.start()
        if api:
            host, _, port = self.cfg.api_bind.rpartition(":")
            tls_args: dict[str, Any] = {}
            if self.cfg.unsafe_plain_http:
                log.warning("UNSAFE: the REST API on %s serves plain HTTP (unsafe_plain_http): tokens and "
                            "enrollment secrets cross the network in clear", self.cfg.api_bind)
            else:
                tls_args = {"ssl_certfile": str(self.tls.api_file)}
            config = uvicorn.Config(self.asgi, host=host, port=int(port), log_level="warning",
                                    access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S, **tls_args)
            config.load()
            if isinstance(config.ssl, ssl.SSLContext):
                config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
                # Browsers refuse Ed25519 certificates: the console's ECDSA one sits beside it (ADR 1402).
                add_browser_certificate(config.ssl, self.tls, self.cfg.console_tls_file)
                accept_device_certificates(config, self.tls.ca_file)  # devices read firmware by mTLS (ADR 1220)
            self._api_server = uvicorn.Server(config)
            self._api_thread = threading.Thread(target=self._api_server.run, name="iotguard-api", daemon=True)
            self._api_thread.start()
            wait_for_port(host, int(port), timeout=15)

    def _registry_changed(self) -> None:
        if self.embedded_broker is None:
            return
        try:
            self.embedded_broker.refresh()
        except Exception:
            # The change itself is committed; the upkeep thread retries the broker's access.
            log.exception("embedded broker access not refreshed after a registry change; retrying")
            with self._acl_lock:
                self._acl_full = True

    def _upkeep(self) -> None:
        """Keep the embedded broker's access (CRL, ACL) in step with the registry and policy; renew TLS files."""
        seen: tuple[int, int] | None = None
        last_full = last_files = time.monotonic()
        while not self._upkeep_stop.wait(0.25):
            try:
                mono = time.monotonic()
                if mono - last_files >= 3600:
                    last_files = mono
                    if self._ensure_tls():
                        self._reload_api_certificate()
                        seen = None
                key = (self.services.posture.engine.policy_version, self.services.posture.posture.version)
                if self.embedded_broker is not None and (key != seen or mono - last_full >= 60):
                    if seen is None or key[0] != seen[0] or mono - last_full >= 60:
                        # A policy change can move any grant; re-derive everything (and renew the CRL).
                        with self._acl_lock:
                            self._acl_full = True
                        last_full = mono
                    self.embedded_broker.refresh()
                    seen = key
                elif self.cfg.mosquitto_dir and (key != seen or mono - last_full >= 3600):
                    # Changes made by other processes (the CLI, other hubs) reach this one's
                    # posture through maintenance; Mosquitto's CRL and ACL follow them here.
                    self._update_mosquitto()
                    seen, last_full = key, mono
            except Exception:
                log.exception("TLS upkeep failed; retrying")

    def _update_mosquitto(self) -> None:
        update_access_files(self.cfg.mosquitto_dir, self.lifecycle.ca, self.store, self.services.clock.now(),
                            acl_renderer=self.services.posture.broker_acl)
        if self.cfg.mosquitto_pid_file:
            reload(self.cfg.mosquitto_pid_file)

    def _reload_api_certificate(self) -> None:
        # New handshakes use the renewed certificate; open connections keep theirs.
        if self._api_server is not None and isinstance(self._api_server.config.ssl, ssl.SSLContext):
            self._api_server.config.ssl.load_cert_chain(str(self.tls.api_file))
            add_browser_certificate(self._api_server.config.ssl, self.tls, self.cfg.console_tls_file)

    def stop(self) -> None:
        """Stop accepting, finish the batch in progress, shut everything down."""
        if self._api_server is not None:
            self._api_server.should_exit = True
            if self._api_thread is not None:
                self._api_thread.join(timeout=10)
        self._upkeep_stop.set()
        if self._upkeep_thread is not None:
            self._upkeep_thread.join(timeout=10)
        self.maintenance.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self.embedded_broker is not None:
            self.embedded_broker.stop()
        self.store.engine.dispose()
