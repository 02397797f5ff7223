"""Start real hub processes the way a user does (``iotguard hub``) and drive a fleet at them."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from iotguard.tls import client_context
from tests.conftest import MosquittoTls, free_port, wait_port


class HubProcess:
    """``python -m iotguard hub`` in a subprocess, configured through the environment.

    Everything is mutual TLS as a user runs it: the API is HTTPS (verified
    against ``<data_dir>/fleet-ca.pem``), the broker is the embedded one's
    mTLS front or a Mosquitto started with :meth:`use_mosquitto`.
    """

    def __init__(self, tmp: Path, *, database_url: str = "", name: str = "hub") -> None:
        self.tmp = tmp
        self.name = name
        self.api_port = free_port()
        self.broker_port = free_port()
        self.env = {
            **os.environ,
            "IOTGUARD_HUB__DATA_DIR": str(tmp / "hub"),
            "IOTGUARD_HUB__API_BIND": f"127.0.0.1:{self.api_port}",
            "IOTGUARD_HUB__EMBEDDED_BROKER_BIND": f"127.0.0.1:{self.broker_port}",
            "IOTGUARD_HUB__DATABASE_URL": database_url,
            "IOTGUARD_HUB__BROKER_URL": "",
            "IOTGUARD_CONFIG": str(tmp / "no-config.toml"),
        }
        self.broker_url = f"mqtts://127.0.0.1:{self.broker_port}"
        self.api_url = f"https://127.0.0.1:{self.api_port}"
        self.ca_file = tmp / "hub" / "fleet-ca.pem"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: ``python -m MODULE hub`` (a test may run an instrumented entry point, e.g. ``tests.e2e.recording_hub``).
        self.module = "iotguard"

    def use_mosquitto(self, start_broker: Callable[[dict[str, str]], MosquittoTls]) -> MosquittoTls:
        """Configure Mosquitto with ``iotguard broker config`` and point the hub at it (mqtts, CRL/ACL updates)."""
        (self.tmp / "hub").mkdir(parents=True, exist_ok=True, mode=0o700)
        broker = start_broker(self.env)
        self.env.update({"IOTGUARD_HUB__BROKER_URL": broker.url,
                         "IOTGUARD_HUB__MOSQUITTO_DIR": str(broker.conf_dir),
                         "IOTGUARD_HUB__MOSQUITTO_PID_FILE": str(broker.pid_file)})
        self.broker_url = broker.url
        return broker

    def peer(self, name: str) -> HubProcess:
        """Another hub process of the same deployment: same database, broker and hub key store
        (one data directory here; an HSM in production), its own API port and MQTT client id
        in the shared subscription group."""
        other = HubProcess(self.tmp, name=name)
        other.env = {**self.env, "IOTGUARD_HUB__API_BIND": f"127.0.0.1:{other.api_port}",
                     "IOTGUARD_HUB__MQTT_CLIENT_ID": f"iotguard-hub-{name}"}
        other.broker_url = self.broker_url
        return other

    def stats(self, token: str) -> dict[str, Any]:
        """This hub process's ``/v1/stats``."""
        r = httpx.get(f"{self.api_url}/v1/stats", headers={"Authorization": f"Bearer {token}"}, timeout=10,
                      verify=self.verify())
        r.raise_for_status()
        return dict(r.json())

    def verify(self) -> ssl.SSLContext:
        """TLS context that trusts the fleet CA (the hub writes it at start)."""
        return client_context(self.ca_file)

    def start(self, timeout: float = 90.0) -> None:
        self.starts += 1
        log = open(self.tmp / f"{self.name}-{self.starts}.log", "wb")  # noqa: SIM115 - the child process owns it
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, "hub"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited: {(self.tmp / f'{self.name}-{self.starts}.log').read_text()}")
            try:
                if self.ca_file.exists() and \
                        httpx.get(f"{self.api_url}/health", timeout=0.5, verify=self.verify()).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            else:
                time.sleep(0.1)
        raise TimeoutError("hub did not come up")

    def kill(self) -> None:
        """kill -9: no shutdown, no flush, nothing finishes."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def diagnose(self) -> str:
        """Every thread's stack (``kill -USR1``, see ``iotguard hub``) and the log's last lines, without
        the embedded broker's repeated PUBACK-timeout records: what a failing test prints."""
        if self.proc is None or self.proc.poll() is not None:
            return "hub not running"
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        lines = (self.tmp / f"{self.name}-{self.starts}.log").read_text(errors="replace").splitlines()
        kept: list[str] = []
        skipping = False
        for ln in lines:  # drop amqtt's "Task failed ... Timeout waiting for PUBACK" tracebacks
            if "Timeout waiting for PUBACK" in ln:
                skipping = not ln.startswith("TimeoutError")
                continue
            if skipping:
                skipping = not ln.startswith("TimeoutError")
                continue
            if "bootstrap_token" not in ln:  # the one-time operator secret stays out of test output
                kept.append(ln)
        return "\n".join(kept[-200:])

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "iotguard", *args], env=self.env, check=True,
                             capture_output=True, text=True, timeout=60)
        return out.stdout

    def operator_token(self) -> str:
        return self.cli("tokens", "create", "--name", "e2e", "--role", "security-admin").strip().splitlines()[-1]

    def provisioner(self, token: str):  # type: ignore[no-untyped-def]
        client = httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                              verify=self.verify())

        def provision(device_id: str, model: str) -> str:
            r = client.post("/v1/devices", json={"device_id": device_id, "model": model})
            r.raise_for_status()
            return str(r.json()["enrollment_code"])

        return provision


def wait_acknowledged(fleet: Any, what: str, timeout: float = 120.0, hubs: Sequence[HubProcess] = ()) -> None:
    """Let the fleet's agents resend what their outboxes hold until the hub acknowledged it all.
    On failure the message says what each waiting device and each of ``hubs`` was doing."""
    deadline = time.monotonic() + timeout
    while fleet.pending() and time.monotonic() < deadline:
        fleet.resend_due()
        time.sleep(0.2)
    if fleet.pending():
        report = "\n".join(stuck_devices(fleet) + [f"--- {h.name}:\n{h.diagnose()}" for h in hubs])
        raise AssertionError(f"{what}: the hub did not acknowledge every reading\n{report}")


def stuck_devices(fleet: Any) -> list[str]:
    """Each device still waiting for acknowledgements: its outbox and its MQTT client's state."""
    out = []
    for dev in fleet.devices:
        a = dev.agent
        if not a.pending():
            continue
        c = a._client
        thread = getattr(c, "_thread", None)
        out.append(f"{a.device_id}: pending={a.pending()} connected={a.connected} state={getattr(c, '_state', None)} "
                   f"thread_alive={thread.is_alive() if thread is not None else None} "
                   f"inflight={getattr(c, '_inflight_messages', None)} queued={len(getattr(c, '_out_messages', {}))}")
    return out


def assert_exactly_once(sent: set[tuple[str, int, int]], stored: Counter[tuple[str, int, int]], what: str) -> None:
    """Every reading sent is stored, once, and nothing else is (sets of (device, epoch, seq))."""
    assert [k for k, n in stored.items() if n > 1] == [], f"{what}: a reading was stored twice"
    lost = sent - set(stored)
    assert lost == set(), f"{what}: {len(lost)} readings lost"
    assert set(stored) - sent == set(), f"{what}: stored readings no device sent"


__all__ = ["HubProcess", "assert_exactly_once", "free_port", "wait_acknowledged", "wait_port"]
