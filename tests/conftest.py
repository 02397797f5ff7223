"""Shared test fixtures."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files holding slow (real-process) tests first.

    pytest-xdist hands whole files to its workers in collection order (``--dist loadfile`` with
    ``--no-loadscope-reorder``; by default it would order files by their number of tests, which put
    the end-to-end files, few tests of minutes each, last). A minutes-long file that starts last runs
    alone at the end while the other workers idle. Started first, the long files overlap and the many
    short files fill the gaps (longest-first scheduling). The order within a file is kept.
    """
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)
VECTORS_DIR = REPO_ROOT / "tests" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """Directory of the official known-answer vectors, kept in the repository (``tests/vectors``).

    Missing vectors fail the test rather than skip it: a crypto suite that
    silently runs no known-answer test is not tested.
    """
    if not VECTORS_DIR.is_dir():
        pytest.fail(f"known-answer vectors not found at {VECTORS_DIR}")
    return VECTORS_DIR


# -- real components -------------------------------------------------------

import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

PG_BIN = Path(os.environ.get("IOTGUARD_PG_BIN", "/usr/lib/postgresql/15/bin"))
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def embedded_hub(tmp_path: Path) -> Iterator[Any]:
    """A started in-process :class:`~iotguard.hub.service.Hub` on embedded defaults (embedded broker
    with its mTLS front, HTTPS API) on free loopback ports."""
    from iotguard.config import HubConfig
    from iotguard.hub.service import Hub

    hub = Hub(HubConfig(data_dir=str(tmp_path / "hub"), embedded_broker_bind=f"127.0.0.1:{free_port()}",
                        api_bind=f"127.0.0.1:{free_port()}"))
    hub.start()
    yield hub
    hub.stop()


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def _missing(what: str) -> None:
    """Skip on a developer machine without ``what``; fail in CI, where it must exist."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI (.ci/run installs it)")
    pytest.skip(f"{what} not installed")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields its base URL (no database name)."""
    import tempfile

    if not (PG_BIN / "initdb").exists():
        _missing("PostgreSQL server binaries")
    # Not under pytest's tmp dir: that is private to root, and the server runs as "postgres".
    base = Path(tempfile.mkdtemp(prefix="iotguard-pg-"))
    data = base / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(base, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*prefix, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N"],
                   check=True, capture_output=True)
    port = free_port()
    subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """URL of a fresh, empty database on the throwaway server."""
    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{postgres_server}/{name}"


@dataclass
class MosquittoTls:
    """A Mosquitto running exactly the configuration ``iotguard broker config`` wrote."""

    url: str
    port: int
    conf_dir: Path
    pid_file: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_mosquitto_tls(env: dict[str, str], base: Path | None = None) -> MosquittoTls:
    """Run ``iotguard broker config`` for the hub configured by ``env``, then Mosquitto on its output.

    The hub's data directory must exist (the CLI builds the hub core there,
    creating the fleet CA on first use).
    """
    import sys
    import tempfile

    if not Path(MOSQUITTO).exists():
        _missing("mosquitto")
    if base is None:
        # Not under pytest's tmp dir: it is private to root, and Mosquitto drops to its own user.
        base = Path(tempfile.mkdtemp(prefix="iotguard-mosq-"))
        base.chmod(0o711)
    port = free_port()
    conf_dir = base / "broker"
    subprocess.run([sys.executable, "-m", "iotguard", "broker", "config", "--out", str(conf_dir),
                    "--hostname", "127.0.0.1", "--port", str(port), "--bind", "127.0.0.1"],
                   env=env, check=True, capture_output=True, timeout=120)
    log = base / "mosquitto.log"
    with log.open("wb") as log_f:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf_dir / "mosquitto.conf")], stdout=log_f,
                                stderr=subprocess.STDOUT)
    pid_file = conf_dir / "mosquitto.pid"
    try:
        wait_port(port)
    except TimeoutError:
        proc.kill()
        raise RuntimeError("mosquitto did not start: " + log.read_text()) from None
    if not pid_file.exists():  # Mosquitto writes its pid file only when it daemonizes
        pid_file.write_text(str(proc.pid))
    return MosquittoTls(f"mqtts://127.0.0.1:{port}", port, conf_dir, pid_file, proc, log)


@pytest.fixture
def mosquitto_tls() -> Iterator[Callable[..., MosquittoTls]]:
    """Factory: Mosquitto with the production mTLS configuration for a hub (see :func:`start_mosquitto_tls`)."""
    started: list[MosquittoTls] = []

    def start(env: dict[str, str]) -> MosquittoTls:
        broker = start_mosquitto_tls(env)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()
        shutil.rmtree(broker.conf_dir.parent, ignore_errors=True)


SWTPM = shutil.which("swtpm") or "/usr/bin/swtpm"
_SWTPM_CMD_INIT = 2  # swtpm control channel: power on / _TPM_Init


@dataclass
class Swtpm:
    """A throwaway ``swtpm`` TPM 2.0 on loopback: the TCTI string and its power button."""

    tcti: str
    ctrl_port: int

    def startup(self) -> None:
        """Send TPM2_Startup(CLEAR), as firmware does after power-on."""
        from tpm2_pytss import ESAPI, TCTILdr
        from tpm2_pytss.constants import TPM2_SU

        name, _, conf = self.tcti.partition(":")
        tcti = TCTILdr(name, conf)
        esapi = ESAPI(tcti)
        try:
            esapi.startup(TPM2_SU.CLEAR)
        finally:
            esapi.close()
            tcti.close()

    def power_cycle(self) -> None:
        """Platform reset: _TPM_Init over the control channel, then TPM2_Startup(CLEAR) (PCRs back to zero)."""
        with socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=5) as s:
            s.sendall(_SWTPM_CMD_INIT.to_bytes(4, "big") + (0).to_bytes(4, "big"))
            answer = s.recv(4)
        if answer != bytes(4):
            raise RuntimeError(f"swtpm CMD_INIT failed: {answer.hex()}")
        self.startup()


def _free_port_pair() -> tuple[int, int]:
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port, port + 1
    raise RuntimeError("no two adjacent free loopback ports")


@contextlib.contextmanager
def running_swtpm(state: Path) -> Iterator[Swtpm]:
    """Start an ``swtpm`` with its state in ``state`` (free loopback ports), started up; stop it after.

    Skips on a developer machine without swtpm or tpm2-pytss; fails under CI.
    """
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        _missing("tpm2-pytss (pip, built against libtss2-dev)")
    if not Path(SWTPM).exists():
        _missing("swtpm")
    state.mkdir(exist_ok=True)  # may hold a manufactured state (swtpm_setup)
    # The swtpm TCTI finds the control channel at the server port + 1.
    server, ctrl = _free_port_pair()
    proc = subprocess.Popen(
        [
            SWTPM, "socket", "--tpm2",
            "--server", f"type=tcp,port={server},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
            "--tpmstate", f"dir={state}",
            "--flags", "not-need-init",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_port(server)
        tpm = Swtpm(f"swtpm:host=127.0.0.1,port={server}", ctrl)
        tpm.startup()
        yield tpm
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    """A fresh ``swtpm`` (TPM 2.0, socket mode, free loopback ports), started up.

    Skips on a developer machine without swtpm or tpm2-pytss; fails under CI.
    """
    with running_swtpm(tmp_path / "swtpm-state") as tpm:
        yield tpm


@pytest.fixture
def other_swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    """A second, independent ``swtpm`` (another TPM: its own EK and storage hierarchy)."""
    with running_swtpm(tmp_path / "swtpm-state-other") as tpm:
        yield tpm
