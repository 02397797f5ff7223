"""Fixtures of the key-store tests: one factory per backend, and a throwaway SoftHSM2 token."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from iotguard.keys import KeyStore, Pkcs11KeyStore, PufKeyStore, SoftwareKeyStore
from iotguard.keys.puf import SramPuf

SOFTHSM_MODULE = os.environ.get("IOTGUARD_SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
BINDING = b"test device binding: fuse 0001"


@pytest.fixture(autouse=True)
def _isolated_device_secret(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the per-install device secret out of the real home directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
    monkeypatch.delenv("IOTGUARD_DEVICE_SECRET", raising=False)


@dataclass(frozen=True)
class SoftHsmToken:
    module: str
    label: str
    pin: str = field(repr=False)
    conf: Path


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    """A freshly initialised SoftHSM2 token in a temporary directory.

    Skips only when SoftHSM2 is not installed, and fails instead when the
    ``CI`` environment variable is set: CI must run the HSM tests.
    """
    util = shutil.which("softhsm2-util")
    if not Path(SOFTHSM_MODULE).exists() or util is None:
        message = f"SoftHSM2 not installed (module {SOFTHSM_MODULE}, softhsm2-util)"
        if os.environ.get("CI"):
            pytest.fail(message + " but CI is set: the PKCS#11 tests must run")
        pytest.skip(message)
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    label = f"iotguard-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", secrets.token_hex(8)],
        check=True,
        capture_output=True,
    )
    return SoftHsmToken(SOFTHSM_MODULE, label, pin, conf)


@dataclass
class Backend:
    """How to open (and reopen) one backend's store for a test."""

    name: str
    open: Callable[[], KeyStore]
    directory: Path | None = None
    opened: list[KeyStore] = field(default_factory=list)

    def store(self) -> KeyStore:
        s = self.open()
        self.opened.append(s)
        return s


_PUF_SILICON = SramPuf.manufacture(seed=2024)


@pytest.fixture(
    params=[
        "software",
        pytest.param("pkcs11", marks=pytest.mark.softhsm),
        "puf",
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend, for the shared contract suite."""
    name = request.param
    if name == "software":
        directory = tmp_path / "software"
        b = Backend(name, lambda: SoftwareKeyStore(directory, device_binding=BINDING), directory)
    elif name == "pkcs11":
        token: SoftHsmToken = request.getfixturevalue("softhsm")
        prefix = f"t-{uuid.uuid4().hex[:8]}/"
        b = Backend(name, lambda: Pkcs11KeyStore(token.module, token.label, token.pin, label_prefix=prefix))
    else:
        directory = tmp_path / "puf"
        b = Backend(name, lambda: PufKeyStore(_PUF_SILICON, directory), directory)
    yield b
    for s in b.opened:
        if isinstance(s, Pkcs11KeyStore):
            s.zeroize()
            s.close()
