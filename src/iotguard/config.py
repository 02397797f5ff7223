"""Typed configuration: TOML file, then environment variables, validated.

Every setting has a secure default; nothing here is a credential. The file is
``iotguard.toml`` (or ``--config PATH``); an environment variable
``IOTGUARD_<SECTION>__<NAME>`` overrides a file value, e.g.
``IOTGUARD_HUB__DATABASE_URL=postgresql+psycopg://...``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from iotguard.errors import ConfigError

__all__ = ["AgentConfig", "Config", "HubConfig", "load_config"]


@dataclass
class HubConfig:
    """Settings of the hub process."""

    data_dir: str = "iotguard-data"
    #: Empty means SQLite at ``<data_dir>/hub.db``.
    database_url: str = ""
    #: Empty means: start the embedded broker in-process on ``embedded_broker_bind``.
    #: ``mqtts://`` connects with the hub's client certificate (mTLS, TLS 1.3).
    broker_url: str = ""
    #: The embedded broker's mTLS listener (device certificates from the fleet CA).
    embedded_broker_bind: str = "127.0.0.1:8883"
    #: UNSAFE: the embedded broker listens in plain TCP without device
    #: authentication, and ``mqtt://`` broker URLs are accepted. Logged loudly.
    unsafe_plaintext_broker: bool = False
    api_bind: str = "127.0.0.1:8080"
    #: Host names and addresses in the API's HTTPS certificate besides the host of ``api_bind``.
    api_hostnames: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1"])
    #: UNSAFE: serve the REST API over plain HTTP. Logged loudly.
    unsafe_plain_http: bool = False
    #: Use an MQTT shared subscription so N hubs split the load (external brokers).
    shared_subscription: bool = True
    mqtt_client_id: str = "iotguard-hub"
    #: MQTT keep-alive of the hub's broker connection: a link that silently drops packets is
    #: noticed after 1-2x this many seconds (no answer to PINGREQ), then the hub reconnects.
    broker_keepalive_s: int = 30
    #: UNSAFE (fault injection): the hub's wall clock is the real one plus the seconds written in
    #: this file (``iotguard.clock.OffsetFileClock``), to test clock jumps. Logged loudly.
    unsafe_clock_offset_file: str = ""
    batch_max_messages: int = 2000
    batch_max_wait_ms: int = 25
    max_envelope_bytes: int = 16384
    #: Largest envelope on a device's ``media`` topic (anonymised clips and frames).
    max_media_envelope_bytes: int = 262_144
    max_reading_fields: int = 64
    replay_window: int = 1024
    enrollment_token_ttl_s: int = 86400
    cert_validity_days: int = 30
    allowed_suites: list[str] = field(
        default_factory=lambda: ["ascon-aead128", "chacha20-poly1305", "aes-128-gcm", "aes-256-gcm"]
    )
    #: Open Ascon-AEAD128 batches at ingest with the Numba-compiled form (ADR 0101;
    #: the ``accel`` extra): about 4x the NumPy form on 1 KiB readings. Each hub
    #: process compiles it once at start (a few seconds).
    ascon_compiled: bool = False
    #: Extract flow features and score them with the Numba-compiled kernels (ADR 0705,
    #: ADR 0706; the ``accel`` extra): the same features and scores for less CPU. The
    #: hub's flow monitor compiles them when it is first built (a few seconds, once per process).
    detection_compiled: bool = False
    #: A MaxMind-format country database (``.mmdb``: GeoLite2-Country, DB-IP country lite) for the
    #: ``new_country`` flow rule (ADR 0717); empty: no such rule. Read once per hub process at start.
    detection_country_database: str = ""
    #: The flow monitor learns its baselines from at least this many flows ... (ADR 0710)
    detection_learn_flows: int = 2000
    #: ... over at least this many seconds of flow time (two hours: the damped statistics settle and
    #: slow devices are seen many times; a fleet that reports hourly wants a day or more).
    detection_learn_s: float = 7200.0
    #: How long a cached device record may be used before it is re-read
    #: (bounds how fast a revocation made by another hub process takes effect).
    device_cache_ttl_s: float = 1.0
    #: Key custody of the hub (fleet CA key, storage key, audit checkpoint key):
    #: ``software`` (sealed store in ``<data_dir>/keys``) or ``pkcs11`` (an HSM;
    #: the PIN is read from the environment variable ``pkcs11_pin_env``).
    keystore_backend: str = "software"
    pkcs11_module: str = ""
    pkcs11_token: str = ""
    pkcs11_pin_env: str = "IOTGUARD_PKCS11_PIN"
    #: Directory written by ``iotguard broker config``; when set, the hub rewrites the
    #: broker's CRL and ACL on every revocation and sends SIGHUP to ``mosquitto_pid_file``.
    mosquitto_dir: str = ""
    mosquitto_pid_file: str = ""
    #: Seconds between signed audit-log checkpoints (each is also anchored).
    checkpoint_interval_s: float = 60.0
    #: EVM JSON-RPC endpoint where checkpoints are also anchored (empty: no chain
    #: anchoring); ``chain_contract`` is the deployed ``CheckpointAnchor`` and
    #: ``chain_sender`` the account the node signs with (the contract's submitter).
    chain_rpc_url: str = ""
    chain_contract: str = ""
    chain_sender: str = ""
    #: Checkpoints per anchoring transaction, and the longest one waits for its batch.
    chain_batch_size: int = 128
    chain_max_delay_s: float = 600.0
    #: Block the contract was deployed in (event lookups start there).
    chain_from_block: int = 0
    #: Refuse enrollment unless the device's chain of custody (manufacturer,
    #: distributor, installer, operator, each signing) is logged and verifies
    #: against the parties in ``custody_parties_file`` (JSON).
    custody_required: bool = False
    custody_parties_file: str = ""
    #: Witnesses that must cosign a checkpoint before it is final and anchored
    #: (JSON list of ``{url, key, ca}``; see ``iotguard.hub.witnessing``), and how
    #: many of them (0: all).
    witnesses_file: str = ""
    witness_quorum: int = 0
    #: Serve the OpenAPI schema and its pages (/openapi.json, /docs, /redoc).
    #: They answer without authentication, so they are off unless turned on.
    api_docs: bool = False
    #: Privacy-loss budget of each data subject per period, across local DP,
    #: central queries and federated learning (docs/analytics.md).
    analytics_budget_epsilon: float = 1.0
    #: Length of a subject's budget period; device contracts' periods should match.
    analytics_budget_period_s: int = 86400
    #: Where vulnerability reports go (a security.txt URL or a mailbox); the compliance report
    #: checks that one is published (ETSI EN 303 645 provision 5.2).
    security_contact: str = ""
    #: PEM file (certificate chain, then its ECDSA or RSA key) the API listener presents to web
    #: browsers, from a CA they trust; empty: the fleet CA's ECDSA certificate ``tls/console.pem``
    #: (browsers warn: they cannot check the Ed25519 fleet CA's signature; ADR 1402).
    console_tls_file: str = ""
    #: OpenTelemetry traces (off when empty): one server span per API and console request,
    #: joined to the caller's W3C ``traceparent``, written as JSON lines to this file (ADR 1405).
    otel_traces_file: str = ""
    #: Ingest quotas (ADR 1500): readings a second and burst per device and per
    #: segment, fleet-wide; 0 turns a rate off. ``quota_share`` is the number of
    #: hub processes splitting the load on one shared subscription (each owns 1/N).
    quota_device_rate: float = 200.0
    quota_device_burst: float = 2000.0
    quota_segment_rate: float = 20000.0
    quota_segment_burst: float = 100000.0
    quota_share: int = 1
    #: Publishes a second and burst per device certificate at the embedded
    #: broker's front; a connection over it is slowed down (back-pressure), not dropped.
    broker_publish_rate: float = 200.0
    broker_publish_burst: float = 2000.0
    #: PEM bundle of the TPM manufacturer root CAs that EK certificates must chain to before
    #: an attestation key is certified against the EK (ADR 0812); empty: every EK is refused.
    tpm_ek_roots: str = ""
    #: PEM bundle of TPM manufacturer intermediate CAs, offered for building the path from an EK
    #: certificate read from the TPM's NV (which holds only the EK certificate) to a root (ADR 0815).
    tpm_ek_intermediates: str = ""
    #: UNSAFE: certify TPM attestation keys against EKs without a valid manufacturer
    #: certificate chain (or with no roots configured). Logged loudly.
    unsafe_accept_unendorsed_ek: bool = False
    #: Certificate revocation lists (PEM or DER files) of TPM manufacturer CAs (ADR 0814): an EK
    #: certificate or intermediate on its issuer's CRL is refused; a CRL that does not verify or is past
    #: nextUpdate refuses certifications through its issuer. Read when the hub starts.
    tpm_ek_crls: list[str] = field(default_factory=list)

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'hub.db'}"


@dataclass
class AgentConfig:
    """Settings of a device agent."""

    data_dir: str = "iotguard-agent"
    #: ``https://`` (the fleet CA is pinned from the enrollment code); ``http://`` needs ``unsafe_plain_http``.
    hub_url: str = "https://127.0.0.1:8080"
    #: ``mqtts://`` (mTLS with the transport certificate); ``mqtt://`` needs ``unsafe_plaintext_broker``.
    broker_url: str = "mqtts://127.0.0.1:8883"
    #: UNSAFE: allow ``mqtt://`` (no TLS, no broker authentication). Logged loudly.
    unsafe_plaintext_broker: bool = False
    #: UNSAFE: allow an ``http://`` hub URL. Logged loudly.
    unsafe_plain_http: bool = False
    #: UNSAFE (fault injection): the agent's wall clock is the real one plus the seconds written
    #: in this file (``iotguard.clock.OffsetFileClock``), to test clock jumps. Logged loudly.
    unsafe_clock_offset_file: str = ""
    suites: list[str] = field(default_factory=lambda: ["ascon-aead128", "chacha20-poly1305"])
    interval_s: float = 5.0
    #: Seconds without an end-to-end acknowledgement before a reading is resent.
    ack_timeout_s: float = 15.0
    max_buffered_readings: int = 1_000_000
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    #: Device key custody: ``software`` (secure element in ``<data_dir>/keys``),
    #: ``pkcs11`` (a secure element or HSM through PKCS#11) or ``puf-sim``.
    keystore_backend: str = "software"
    pkcs11_module: str = ""
    pkcs11_token: str = ""
    pkcs11_pin_env: str = "IOTGUARD_PKCS11_PIN"
    #: ``puf-sim`` only: the simulated silicon's seed; -1 makes one at the
    #: first start and keeps it in ``<data_dir>/keys/puf-sim-silicon.cbor``.
    puf_seed: int = -1
    #: Measured boot and attestation: the directory of the signed boot image set
    #: (``<stage>.img`` + ``<stage>.manifest``); empty: the agent does not attest.
    boot_images_dir: str = ""
    #: Hex Ed25519 public key of the firmware signing key, sealed as the boot
    #: anchor at the first start (manufacture) and never replaced afterwards.
    firmware_public_key: str = ""
    #: Seconds between re-attestations (the agent also attests at start and answers challenges).
    attest_interval_s: float = 3600.0
    #: Mean seconds between firmware update rounds (each jittered by 20 %; the first falls at a random
    #: point of the first interval; the hub's ``update-check`` command brings the next one forward).
    update_interval_s: float = 21600.0
    #: Root of trust: empty for the software key store's; a TCTI (``device:/dev/tpmrm0``,
    #: ``swtpm:host=127.0.0.1,port=2321``) for a TPM 2.0.
    tpm_tcti: str = ""
    #: UNSAFE: secure boot off: stages that fail verification run anyway (still measured,
    #: so attestation catches them). Models a bypassed secure boot in tests and demos. Logged loudly.
    unsafe_allow_unverified_boot: bool = False


@dataclass
class Config:
    """Whole configuration."""

    hub: HubConfig = field(default_factory=HubConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)


_BOUNDS: dict[str, tuple[float, float]] = {
    "hub.batch_max_messages": (1, 100_000),
    "hub.witness_quorum": (0, 100),
    "hub.max_media_envelope_bytes": (1024, 262_144),
    "hub.batch_max_wait_ms": (0, 10_000),
    "hub.broker_keepalive_s": (2, 3600),
    "hub.max_envelope_bytes": (64, 1_048_576),
    "hub.max_reading_fields": (1, 4096),
    "hub.replay_window": (64, 1 << 20),
    "hub.enrollment_token_ttl_s": (60, 30 * 86400),
    "hub.cert_validity_days": (1, 397),
    "hub.device_cache_ttl_s": (0, 60),
    "hub.detection_learn_flows": (16, 200_000),
    "hub.detection_learn_s": (0, 30 * 86400),
    "hub.checkpoint_interval_s": (1, 86400),
    "hub.chain_batch_size": (1, 512),
    "hub.chain_max_delay_s": (0, 7 * 86400),
    "hub.chain_from_block": (0, 1 << 62),
    "hub.analytics_budget_epsilon": (0, 100),
    "hub.analytics_budget_period_s": (3600, 366 * 86400),
    "hub.quota_device_rate": (0, 10_000_000),
    "hub.quota_device_burst": (1, 100_000_000),
    "hub.quota_segment_rate": (0, 10_000_000),
    "hub.quota_segment_burst": (1, 100_000_000),
    "hub.quota_share": (1, 1024),
    "hub.broker_publish_rate": (0, 10_000_000),
    "hub.broker_publish_burst": (1, 100_000_000),
    "agent.interval_s": (0.001, 86400),
    "agent.ack_timeout_s": (0.1, 3600),
    "agent.max_buffered_readings": (1, 100_000_000),
    "agent.reconnect_min_s": (0.01, 60),
    "agent.reconnect_max_s": (0.1, 3600),
    "agent.puf_seed": (-1, 2**63 - 1),
    "agent.attest_interval_s": (10, 30 * 86400),
    "agent.update_interval_s": (10, 30 * 86400),
}


def _coerce(path: str, typ: Any, value: Any) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if typ == list[str]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: expected a list of strings, got {value!r}")
        return list(value)
    raise ConfigError(f"{path}: unsupported type")


def _apply(section_name: str, obj: Any, values: Mapping[str, Any]) -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown setting {section_name}.{key}; known: {', '.join(sorted(names))}")
        setattr(obj, key, _coerce(f"{section_name}.{key}", hints[key], value))


def _validate(cfg: Config) -> None:
    for path, (lo, hi) in _BOUNDS.items():
        section, name = path.split(".")
        value = getattr(getattr(cfg, section), name)
        if not lo <= value <= hi:
            raise ConfigError(f"{path} = {value} is out of range [{lo}, {hi}]")
    if cfg.agent.reconnect_min_s > cfg.agent.reconnect_max_s:
        raise ConfigError("agent.reconnect_min_s must not exceed agent.reconnect_max_s")
    from iotguard.crypto import suite_names

    known = set(suite_names())
    for path, suites in (("hub.allowed_suites", cfg.hub.allowed_suites), ("agent.suites", cfg.agent.suites)):
        if not suites:
            raise ConfigError(f"{path} must name at least one cipher suite")
        unknown = [s for s in suites if s not in known]
        if unknown:
            raise ConfigError(f"{path}: unknown cipher suite(s) {unknown}; known: {sorted(known)}")
    for path, backend in (("hub.keystore_backend", cfg.hub.keystore_backend),
                          ("agent.keystore_backend", cfg.agent.keystore_backend)):
        if backend not in ("software", "pkcs11", "puf-sim"):
            raise ConfigError(f"{path}: unknown key store backend {backend!r}; use software, pkcs11 or puf-sim")
    if cfg.hub.keystore_backend == "puf-sim":
        raise ConfigError("hub.keystore_backend: the simulated PUF is a device backend, not for the hub")
    for path, url in (("hub.database_url", cfg.hub.database_url),):
        if url and not url.startswith(("sqlite://", "postgresql")):
            raise ConfigError(f"{path}: only sqlite:// and postgresql URLs are supported")
    for path, url in (("hub.broker_url", cfg.hub.broker_url), ("agent.broker_url", cfg.agent.broker_url)):
        if url and not url.startswith(("mqtt://", "mqtts://")):
            raise ConfigError(f"{path}: expected mqtt://host:port or mqtts://host:port, got {url!r}")
    for name, broker_url, unsafe in (("hub", cfg.hub.broker_url, cfg.hub.unsafe_plaintext_broker),
                                     ("agent", cfg.agent.broker_url, cfg.agent.unsafe_plaintext_broker)):
        if broker_url.startswith("mqtt://") and not unsafe:
            raise ConfigError(f"{name}.broker_url: plain mqtt:// has no TLS; use mqtts:// "
                              f"(or set {name}.unsafe_plaintext_broker = true on a closed test network)")
    if not cfg.agent.hub_url.startswith(("https://", "http://")):
        raise ConfigError(f"agent.hub_url: expected an https:// URL, got {cfg.agent.hub_url!r}")
    if cfg.agent.hub_url.startswith("http://") and not cfg.agent.unsafe_plain_http:
        raise ConfigError("agent.hub_url: plain http:// is not authenticated; use https:// "
                          "(or set agent.unsafe_plain_http = true)")


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load configuration from ``path`` (if given or ``./iotguard.toml`` exists) and the environment.

    Raises:
        ConfigError: unreadable file, unknown setting, wrong type or out-of-range value.
    """
    env = os.environ if env is None else env
    cfg = Config()
    file = Path(path) if path else Path(env.get("IOTGUARD_CONFIG", "iotguard.toml"))
    if path or file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        for section, values in data.items():
            if section not in ("hub", "agent") or not isinstance(values, dict):
                raise ConfigError(f"unknown config section [{section}]; known: [hub], [agent]")
            _apply(section, getattr(cfg, section), values)
    for key, value in env.items():
        if not key.startswith("IOTGUARD_") or "__" not in key:
            continue
        section, _, name = key[len("IOTGUARD_") :].partition("__")
        section = section.lower()
        if section not in ("hub", "agent"):
            continue
        _apply(section, getattr(cfg, section), {name.lower(): value})
    _validate(cfg)
    return cfg
