"""The device agent: enrolls, seals readings, publishes them, and keeps each
one on disk until the hub acknowledges it end to end.

State lives in ``<data_dir>``: the key store (identity key, key-agreement
keys, the wrapping key for session state, persistent sequence counters),
the sealed session file and the outbox.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import cbor2
import httpx
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from iotguard.agent import exchange
from iotguard.agent.ack_timer import AckTimer
from iotguard.agent.attester import Attester
from iotguard.agent.broker_watch import PublishWatch
from iotguard.agent.exchange import CA_FILE, IDENTITY_KEY, TRANSPORT_FILE, new_transport_key
from iotguard.agent.outbox import Outbox
from iotguard.agent.privacy import DevicePrivacy
from iotguard.agent.receipts import ReceiptSender, SendResult
from iotguard.agent.update_schedule import UPDATE_COMMAND
from iotguard.channel import (
    SequenceAllocator,
    SessionKeys,
    UplinkSealer,
    ack_topic,
    command_topic,
    decode_ack,
    decode_command,
    split_session_keys,
)
from iotguard.clock import Clock, SystemClock
from iotguard.config import AgentConfig
from iotguard.crypto import get_suite
from iotguard.errors import (
    ConfigError,
    EnrollmentError,
    IntegrityError,
    IotGuardError,
    MalformedError,
    StorageError,
)
from iotguard.fileio import atomic_write
from iotguard.hub.broker import parse_broker_url
from iotguard.identity import (
    b64e,
    parse_enrollment_code,
    request_transcript,
    sign_device_request,
    token_hash,
)
from iotguard.keys import KeyKind, KeyStore, KeyStoreConfig, open_key_store
from iotguard.privacy import ConsentConfig, ConsentState
from iotguard.tls import client_context, fetch_pinned_ca
from iotguard.wire import Reading, encode_reading

__all__ = ["Agent"]

log = logging.getLogger(__name__)

_STATE_KEY = "state-wrap"
_SESSION_FILE = "session.sealed"


class Agent:
    """One device's runtime.

    Args:
        cfg: Agent settings.
        device_id: The device's id (from its enrollment code).
        keystore: Key custody backend; a software secure element in
            ``<data_dir>/keys`` when None.
        clock: Injected clock.
        http: HTTP client for the hub API (tests pass one bound to an app).
    """

    def __init__(self, cfg: AgentConfig, device_id: str, *, keystore: KeyStore | None = None,
                 clock: Clock | None = None, http: httpx.Client | None = None) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.dir = Path(cfg.data_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keystore = keystore or open_key_store(
            KeyStoreConfig(backend=cfg.keystore_backend, pkcs11_module=cfg.pkcs11_module,
                           pkcs11_token=cfg.pkcs11_token, pkcs11_pin_env=cfg.pkcs11_pin_env,
                           puf_seed=cfg.puf_seed),
            default_directory=self.dir / "keys")
        self.clock = clock or SystemClock()
        self._http = http
        self.outbox = Outbox(self.dir / "outbox.db", max_items=cfg.max_buffered_readings)
        #: Privacy receipts leave the outbox only once the hub has them (or refused them for good).
        self.receipts = ReceiptSender(self.outbox, self._send_receipt, self.device_id, self.clock.monotonic)
        self._sealer: UplinkSealer | None = None
        self._keys: SessionKeys | None = None
        self._client: mqtt.Client | None = None
        self._tls: ssl.SSLContext | None = None
        self._connected = threading.Event()
        #: Readings handed to the MQTT client that the broker has not taken yet (ADR 1506).
        self.broker_watch = PublishWatch(max(2 * cfg.ack_timeout_s, 10.0))
        #: The resend timeout, adapted to the acknowledgement times measured (ADR 1507).
        self.ack_timer = AckTimer(cfg.ack_timeout_s)
        self._lock = threading.Lock()
        self.acked = 0
        self.privacy: DevicePrivacy | None = None
        #: Answers the hub's attestation challenges (``cmd`` topic) once set.
        self.attester: Attester | None = None
        self.last_envelope = b""
        self._unsaved_receipts: list[bytes] = []
        self.on_ack: Callable[[int, list[int]], None] | None = None
        #: Runs the next firmware update round soon: the hub's ``update-check`` command (``agent_updates``).
        self.on_update_command: Callable[[], None] | None = None
        #: Called with (epoch, seq, reading body) once a reading is in the outbox (simulator bookkeeping).
        self.on_submit: Callable[[int, int, bytes], None] | None = None
        self._load_session()

    def __repr__(self) -> str:
        return f"Agent({self.device_id!r}, enrolled={self.enrolled})"

    # -- session state ---------------------------------------------------

    @property
    def enrolled(self) -> bool:
        return self._sealer is not None

    @property
    def sealer(self) -> UplinkSealer:
        if self._sealer is None:
            raise EnrollmentError("device is not enrolled")
        return self._sealer

    def _load_session(self) -> None:
        path = self.dir / _SESSION_FILE
        if not path.exists():
            return
        raw = self.keystore.unseal(_STATE_KEY, path.read_bytes(), self.device_id.encode())
        st = cbor2.loads(raw)
        self._install(int(st["epoch"]), str(st["suite"]),
                      split_session_keys(bytes(st["keys"]), get_suite(st["suite"]).key_size), str(st["segment"]))

    def _install(self, epoch: int, suite_name: str, keys: SessionKeys, segment: str) -> None:
        suite = get_suite(suite_name)
        seq = SequenceAllocator(self.keystore, f"seq/{epoch}")
        self._keys = keys
        self._sealer = UplinkSealer(suite, self.device_id, epoch, keys.uplink, seq, segment=segment)

    def _save_session(self, epoch: int, suite: str, keys: SessionKeys, segment: str) -> None:
        if not self.keystore.has_key(_STATE_KEY):
            self.keystore.generate(_STATE_KEY, KeyKind.AES256)
        blob = cbor2.dumps({"epoch": epoch, "suite": suite, "segment": segment,
                            "keys": keys.uplink + keys.downlink})
        atomic_write(self.dir / _SESSION_FILE, self.keystore.seal(_STATE_KEY, blob, self.device_id.encode()))

    # -- enrollment ------------------------------------------------------

    def _signed(self, action: str, body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        """A signed device request (wire body, transcript) for ``action``, signed inside the key store."""
        out = sign_device_request(action, self.device_id, body, now=self.clock.now(),
                                  sign=lambda message: self.keystore.sign(IDENTITY_KEY, message))
        return out.wire, out.transcript

    def request(self, action: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send a signed device request for ``action`` to ``path``; returns the hub's JSON reply."""
        return self._post(path, self._signed(action, body)[0])
    def signed_request(self, action: str, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST a signed device request for ``action`` to ``path``; the hub's answer as it came (sensors, health)."""
        return self._client_http().post(path, json=self._signed(action, body)[0])

    def _client_http(self, ca_fingerprint: str | None = None) -> httpx.Client:
        """HTTP client for the hub API, verified against the pinned fleet CA.

        Before enrollment the CA certificate is fetched from the hub's TLS
        chain and accepted only if it matches ``ca_fingerprint`` (from the
        enrollment code); afterwards the stored ``ca.pem`` is used.

        Raises:
            EnrollmentError: no pinned CA yet and no fingerprint to pin one.
            IntegrityError: the hub's chain does not match the fingerprint.
        """
        if self._http is not None:
            return self._http
        url = httpx.URL(self.cfg.hub_url)
        if url.scheme != "https":
            if not self.cfg.unsafe_plain_http:
                raise ConfigError(f"hub URL {self.cfg.hub_url!r} is not https:// (agent.unsafe_plain_http is off)")
            log.warning("UNSAFE: %s talks to the hub over plain HTTP (agent.unsafe_plain_http)", self.device_id)
            self._http = httpx.Client(base_url=self.cfg.hub_url, timeout=15.0)
            return self._http
        ca_path = self.dir / CA_FILE
        if not ca_path.exists():
            if ca_fingerprint is None:
                raise EnrollmentError("no pinned fleet CA: enroll with an enrollment code first")
            try:
                ca_pem = fetch_pinned_ca(url.host, url.port or 443, ca_fingerprint)
            except OSError as exc:
                raise EnrollmentError(f"hub unreachable for CA pinning: {exc}") from None
            atomic_write(ca_path, ca_pem, mode=0o644)
        self._http = httpx.Client(base_url=self.cfg.hub_url, timeout=15.0, verify=client_context(ca_path))
        return self._http

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self._client_http().post(path, json=body)
        if r.status_code != 200:
            try:
                code = r.json().get("error", "error")
            except ValueError:
                code = "error"
            raise EnrollmentError(f"hub refused {path}: HTTP {r.status_code} {code}")
        data: dict[str, Any] = r.json()
        return data

    def _finish_exchange(self, transcript: bytes, kex_label: str, resp: dict[str, Any],
                         ca_fingerprint: str | None, epoch: int,
                         transport_key: Ed25519PrivateKey | None = None) -> None:
        exchange.finish_exchange(self, transcript, kex_label, resp, ca_fingerprint, epoch, transport_key)

    def enroll(self, enrollment_code: str) -> None:
        """Enroll with the hub using the operator's one-time code.

        Raises:
            MalformedError: the code is not an enrollment code for this device.
            EnrollmentError: the hub refused, or its answer did not verify.
        """
        code = parse_enrollment_code(enrollment_code)
        if code.device_id != self.device_id:
            raise MalformedError("enrollment code is for another device")
        if self.enrolled:
            raise EnrollmentError("device is already enrolled")
        if not self.keystore.has_key(IDENTITY_KEY):
            self.keystore.generate(IDENTITY_KEY, KeyKind.ED25519)
        identity_pk = self.keystore.public_key(IDENTITY_KEY)
        kex_label = "kex/1"
        if self.keystore.has_key(kex_label):
            self.keystore.delete(kex_label)
        kex_pk = self.keystore.generate(kex_label, KeyKind.X25519)
        transport_key, transport_pk = new_transport_key()
        transcript = request_transcript("enroll", {
            "device_id": self.device_id, "token_hash": token_hash(code.secret),
            "identity_public_key": identity_pk, "kex_public_key": kex_pk, "transport_public_key": transport_pk,
            "suites": list(self.cfg.suites)})
        self._client_http(code.ca_fingerprint)  # pin the fleet CA before the token leaves the device
        resp = self._post("/v1/enroll", {
            "device_id": self.device_id, "token": b64e(code.secret), "identity_public_key": b64e(identity_pk),
            "kex_public_key": b64e(kex_pk), "transport_public_key": b64e(transport_pk),
            "suites": list(self.cfg.suites), "signature": b64e(self.keystore.sign(IDENTITY_KEY, transcript))})
        self._finish_exchange(transcript, kex_label, resp, code.ca_fingerprint, 1, transport_key)

    def rekey(self, suites: list[str] | None = None) -> None:
        """Move to the next key epoch (and optionally another cipher suite).

        Raises:
            EnrollmentError: the hub refused or its answer did not verify.
        """
        epoch = self.sealer.epoch + 1
        offered = list(suites or self.cfg.suites)
        kex_label = f"kex/{epoch}"
        if self.keystore.has_key(kex_label):
            self.keystore.delete(kex_label)
        kex_pk = self.keystore.generate(kex_label, KeyKind.X25519)
        wire, transcript = self._signed("rekey", {"epoch": epoch, "kex_public_key": kex_pk, "suites": offered})
        resp = self._post("/v1/rekey", wire)
        self._finish_exchange(transcript, kex_label, resp, None, epoch)

    def renew_certificate(self) -> None:
        """Get a fresh operational certificate for the same identity key.

        Raises:
            EnrollmentError: the hub refused or its answer did not verify.
        """
        exchange.renew_certificate(self)

    def maybe_renew(self, *, before_fraction: float = 1 / 3) -> bool:
        """Renew automatically once less than ``before_fraction`` of the validity remains; True if renewed."""
        path = self.dir / "device.pem"
        if not path.exists():
            return False
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        if cert.not_valid_after_utc - self.clock.now() > lifetime * before_fraction:
            return False
        self.renew_certificate()
        return True

    def respond_to_tamper(self, reason: str) -> bool:
        """Tamper response: tell the hub (signed, while the identity key still exists), then zeroize.

        Call from the enclosure-open (or any tamper sensor) handler. The key
        store is zeroized whether or not the hub could be told; the session
        keys held in memory are dropped. Returns whether the hub acknowledged.
        """
        return exchange.respond_to_tamper(self, reason)

    # -- attestation -----------------------------------------------------

    def attest(self, attester: Attester, nonce: bytes | None = None) -> dict[str, Any]:
        """Attest to the hub: ask for a nonce (or answer a challenge's ``nonce``), post the evidence.

        Returns the hub's appraisal (``status``, ``trust_tier``, ``reasons``).

        Raises:
            EnrollmentError: the hub refused a request.
        """
        if attester.needs_certification:  # a TPM AK: credential activation against the EK first (ADR 0810)
            attester.certify(lambda body: self.request("certify_ak", "/v1/attest/ak", body))
        if nonce is None:
            asked = self._post("/v1/attest", self._signed("attest", attester.nonce_request())[0])
            nonce = bytes.fromhex(str(asked["nonce"]))
        return self._post("/v1/attest", self._signed("attest", attester.evidence_body(nonce))[0])

    # -- telemetry -------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """Connect to the broker (reconnects by itself with backoff)."""
        addr = parse_broker_url(self.cfg.broker_url)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{self.device_id}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        # paho documents integer seconds but accepts any number.
        client.reconnect_delay_set(cast(int, self.cfg.reconnect_min_s), cast(int, self.cfg.reconnect_max_s))
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        if addr.tls:
            self._tls = client_context(self.dir / CA_FILE, certfile=self.dir / TRANSPORT_FILE)
            client.tls_set_context(self._tls)
        elif not self.cfg.unsafe_plaintext_broker:
            raise ConfigError(f"broker URL {addr.url} is not mqtts:// (agent.unsafe_plaintext_broker is off)")
        else:
            log.warning("UNSAFE: %s publishes to %s without TLS (agent.unsafe_plaintext_broker)",
                        self.device_id, addr.url)
        self._client = client
        self.broker_watch.clear()
        client.connect_async(addr.host, addr.port, keepalive=30)
        client.loop_start()
        self._connected.wait(timeout)

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self.outbox.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("%s: broker refused connection: %s", self.device_id, reason)
            return
        client.subscribe(ack_topic(self.sealer.segment, self.device_id), qos=1)
        client.subscribe(command_topic(self.sealer.segment, self.device_id), qos=1)
        self.broker_watch.connected(time.time())
        self._connected.set()
        # Everything unacknowledged is due again after a reconnect (the client itself sends again
        # what it still holds: those are skipped).
        self.resend_due(force=True)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        self._connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._keys is None:
            return
        if msg.topic.endswith("/cmd"):
            self._on_command(bytes(msg.payload))
            return
        try:
            ack = decode_ack(self.device_id, bytes(msg.payload), self._keys.downlink)
        except (IntegrityError, MalformedError) as exc:
            log.warning("%s: ignoring bad ack: %s", self.device_id, exc.code)
            return
        seqs = list(ack.sequences())
        sent = self.outbox.sent_once(ack.epoch, seqs)
        if sent:
            self.ack_timer.sample(time.time() - min(sent))  # the slowest in this acknowledgement
        self.outbox.remove(ack.epoch, seqs)
        with self._lock:
            self.acked += len(seqs)
        if self.on_ack is not None:
            self.on_ack(ack.epoch, seqs)

    def submit(self, reading: Reading, *, kept: Callable[[], None] | None = None) -> int:
        """Seal a reading, store it in the outbox, and publish it; returns its sequence.

        The reading is on disk before it is published, so nothing is lost if
        the agent, broker or hub fail afterwards. ``kept`` is called once the
        outbox has it (the privacy receipt counts it then).

        Raises:
            EnrollmentError: not enrolled.
            UsageLimitError: the key must be renewed first (see :meth:`rekey`).
            StorageError: ``outbox_unwritable`` or ``state_unwritable`` (volume full): refused at
                capture, not sent; a sequence number it took is never used again (the hub's replay
                window allows gaps).
        """
        return self.keep_and_send(encode_reading(reading), kept=kept)

    def keep_and_send(self, body: bytes, *, topic: str | None = None, kept: Callable[[], None] | None = None) -> int:
        """Seal ``body``, keep the envelope in the outbox until the hub acknowledges it, and publish it
        on ``topic`` (the device's telemetry topic when ``None``); returns its sequence. See :meth:`submit`.

        Raises:
            EnrollmentError, UsageLimitError, StorageError: as :meth:`submit`.
        """
        sealer = self.sealer
        if sealer.needs_rekey():
            self.rekey()
            sealer = self.sealer
        try:
            seq, envelope = sealer.seal(body, topic=topic)
        except OSError as exc:  # the next block of sequence numbers could not be reserved on disk
            raise StorageError(f"sequence counter not writable (volume full?): {exc}",
                               code="state_unwritable") from exc
        self.outbox.add(sealer.epoch, seq, envelope, topic)
        if kept is not None:
            kept()
        if self.on_submit is not None and topic is None:
            self.on_submit(sealer.epoch, seq, body)
        self.last_envelope = envelope
        self._publish(topic or sealer.topic, envelope, (sealer.epoch, seq))
        self.outbox.mark_sent([(sealer.epoch, seq)], time.time())
        return seq

    def _on_command(self, data: bytes) -> None:
        assert self._keys is not None
        try:
            kind, payload = decode_command(self.device_id, data, self._keys.downlink)
        except (IntegrityError, MalformedError) as exc:
            log.warning("%s: ignoring bad command: %s", self.device_id, exc.code)
            return
        if kind == "consent-config" and self.privacy is not None:
            try:
                ack = self.privacy.pipeline.apply_consent_config(ConsentConfig.decode(payload))
            except IotGuardError as exc:
                log.warning("%s: consent configuration refused: %s", self.device_id, exc.code)
                return
            # Collection already follows the new consent; the acknowledgement
            # goes to the hub off the MQTT network thread.
            threading.Thread(target=self._send_consent_ack, args=(ack.encode(),), daemon=True).start()
        elif kind == UPDATE_COMMAND and self.on_update_command is not None:
            self.on_update_command()
        elif kind == "attest-challenge" and self.attester is not None:
            threading.Thread(target=self._answer_challenge, args=(self.attester, payload), daemon=True).start()
        else:
            log.warning("%s: unknown command %r ignored", self.device_id, kind)

    def _answer_challenge(self, attester: Attester, nonce: bytes) -> None:
        try:
            self.attest(attester, nonce)
        except (httpx.HTTPError, IotGuardError) as exc:
            log.warning("%s: attestation challenge not answered: %s", self.device_id, exc)

    def _send_consent_ack(self, ack: bytes) -> None:
        try:
            self._post("/v1/consent/ack", self._signed("consent_ack", {"ack": ack})[0])
        except (httpx.HTTPError, IotGuardError) as exc:
            log.warning("%s: consent acknowledgement not delivered: %s", self.device_id, exc)

    def collect(self, sample: dict[str, Any], ts_ms: int | None = None) -> list[int]:
        """Run a sensor sample through the privacy pipeline and submit what may leave.

        Returns the sequence numbers of the readings submitted (one per
        permitted purpose; none when consent, frequency or budget refuse all).
        A reading counts in the next privacy receipt only once the outbox has
        it: one refused at capture (volume full) is not counted.

        Raises:
            EnrollmentError: privacy is not attached (see :meth:`attach_privacy`).
            StorageError: a reading was refused at capture (see :meth:`submit`); the readings
                of this sample submitted before it stand and are counted.
        """
        if self.privacy is None:
            raise EnrollmentError("no privacy pipeline attached; raw sensor data never leaves the device")
        privacy = self.privacy
        return [self.submit(reading, kept=functools.partial(privacy.record, entry))
                for reading, entry in privacy.release(sample, ts_ms)]

    def attach_privacy(self, model: str, consent: ConsentState, clock: Clock | None = None,
                       rng: random.Random | None = None) -> DevicePrivacy:
        """Run every sample through the data contract of ``model`` from now on."""
        self.privacy = DevicePrivacy(self.keystore, self.device_id, model, consent, clock or self.clock, rng=rng)
        return self.privacy

    def send_receipt(self, *, force: bool = False) -> bool:
        """Sign the privacy receipt for readings released since the last one and send what is pending.

        Receipts are kept in the outbox until the hub has stored them; while the
        hub is unreachable or failing they wait and are retried with back-off
        (``force`` retries now), see :mod:`iotguard.agent.receipts`. Returns True
        when a new receipt was signed.
        """
        if self.privacy is None:
            return False
        receipt = self.privacy.seal_receipt(self.privacy.clock.now())  # the time of the readings it covers
        if receipt is not None:
            self._unsaved_receipts.append(receipt)
        while self._unsaved_receipts:  # signed but not yet on disk (outbox_unwritable): kept in memory
            try:
                self.outbox.add_receipt(self._unsaved_receipts[0])
            except StorageError as exc:
                log.warning("%s: receipt kept in memory until the outbox is writable: %s", self.device_id, exc.code)
                break
            self._unsaved_receipts.pop(0)
        self.receipts.flush(force=force)
        return receipt is not None

    def _send_receipt(self, blob: bytes) -> SendResult:
        r = self._client_http().post("/v1/receipts", json=self._signed("upload_receipt", {"receipt": blob})[0])
        if r.status_code == 200:
            return SendResult(200)
        try:
            code = str(r.json().get("error", ""))
        except ValueError:
            code = ""
        return SendResult(r.status_code, code)

    def publish_raw(self, topic: str, payload: bytes) -> bool:
        """Publish bytes as they are (the simulator's attack hooks use this too); False when not connected."""
        return self._publish(topic, payload, None)

    def _publish(self, topic: str, payload: bytes, key: tuple[int, int] | None) -> bool:
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        info = client.publish(topic, payload, qos=1)
        if key is not None:
            self.broker_watch.record(key, info, time.time())
        return True

    def resend_due(self, *, force: bool = False) -> int:
        """Publish again what the hub has not acknowledged in time (backing off per reading); returns how
        many.

        A reading whose last publish the broker has not taken yet is left to
        the MQTT client; if the broker has taken nothing for the watch's
        stall time, the connection is dropped to be made again (ADR 1506).
        """
        client = self._client
        if client is None or not self._connected.is_set() or self._sealer is None:
            return 0
        now = time.time()
        if self.broker_watch.stalled(now):
            self._drop_wedged_connection(client)
            return 0
        # A reading is resent after the acknowledgement time measured (AckTimer), doubled for each further
        # resend, never later than 8 ack timeouts (ADR 1507); a new connection (force) sends everything
        # once and starts the backoff again.
        due = (self.outbox.due_entries(now + 1, 0.0) if force else
               self.outbox.due_entries(now, self.ack_timer.timeout_s, longest_s=self.ack_timer.longest_s))
        due = [d for d in due if not self.broker_watch.waiting((d[0], d[1]))]
        telemetry = self._sealer.topic
        for e, s, env, topic in due:
            self.broker_watch.record((e, s), client.publish(topic or telemetry, env, qos=1), now)
        if due:
            self.outbox.mark_sent([(e, s) for e, s, _, _ in due], now, first=force)
            if not force:
                self.ack_timer.timed_out()
        return len(due)

    def _drop_wedged_connection(self, client: mqtt.Client) -> None:
        """Shut the TCP connection under the client: its network thread sees the loss and reconnects with
        the usual backoff (``disconnect()`` would end that thread instead)."""
        log.warning("%s: the broker took no publish for %.0f s on a live connection; reconnecting",
                    self.device_id, self.broker_watch.stall_s)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # The TCP socket, not the TLS layer's state; already gone means the client is reconnecting.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def pending(self) -> int:
        """Readings not yet acknowledged by the hub."""
        return len(self.outbox)
