"""Start real hub processes the way a user does (``iotguard hub``) and drive a fleet at them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_port


class HubProcess:
    """``python -m iotguard hub`` in a subprocess, configured through the environment."""

    def __init__(self, tmp: Path, *, database_url: str = "", broker_url: str = "") -> None:
        self.tmp = tmp
        self.api_port = free_port()
        self.broker_port = free_port()
        self.env = {
            **os.environ,
            "IOTGUARD_HUB__DATA_DIR": str(tmp / "hub"),
            "IOTGUARD_HUB__API_BIND": f"127.0.0.1:{self.api_port}",
            "IOTGUARD_HUB__EMBEDDED_BROKER_BIND": f"127.0.0.1:{self.broker_port}",
            "IOTGUARD_HUB__DATABASE_URL": database_url,
            "IOTGUARD_HUB__BROKER_URL": broker_url,
            "IOTGUARD_CONFIG": str(tmp / "no-config.toml"),
        }
        self.broker_url = broker_url or f"mqtt://127.0.0.1:{self.broker_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.tmp / f"hub-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "iotguard", "hub"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited: {(self.tmp / f'hub-{self.starts}.log').read_text()}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
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

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "iotguard", *args], env=self.env, check=True,
                             capture_output=True, text=True, timeout=60)
        return out.stdout

    def operator_token(self) -> str:
        return self.cli("tokens", "create", "--name", "e2e", "--role", "security-admin").strip().splitlines()[-1]

    def provisioner(self, token: str):  # type: ignore[no-untyped-def]
        client = httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

        def provision(device_id: str, model: str) -> str:
            r = client.post("/v1/devices", json={"device_id": device_id, "model": model})
            r.raise_for_status()
            return str(r.json()["enrollment_code"])

        return provision


__all__ = ["HubProcess", "free_port", "wait_port"]
