"""Build and sign a simulated device image set (for tests, benchmarks and the demo).

An image set is one directory holding, per boot stage, ``<stage>.img`` and
``<stage>.manifest`` (``[signed, signature]`` where ``signed`` is
:func:`~iotguard.agent.boot.manifest_message` and ``signature`` the firmware
signing key's Ed25519 signature). :func:`reference_digests` gives the
measurements a verifier should expect from it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import cbor2

from iotguard.agent.boot import BOOT_CHAIN, manifest_message
from iotguard.fileio import atomic_write

__all__ = ["build_image_set", "reference_digests", "simulated_image"]


def simulated_image(stage: str, version: str, size: int = 4096) -> bytes:
    """Deterministic stand-in bytes for a stage's image (a header and filler)."""
    header = f"iotguard simulated {stage} {version}\n".encode()
    filler = hashlib.shake_256(header).digest(max(size - len(header), 0))
    return header + filler


def build_image_set(
    directory: str | os.PathLike[str],
    sign: Callable[[bytes], bytes],
    version: str,
    images: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """Write a signed image set for every stage of the boot chain.

    Args:
        directory: Where to write (created if missing).
        sign: The firmware signing key: Ed25519 signature over a manifest.
        version: Release version written in every manifest.
        images: Image bytes per stage; missing stages get :func:`simulated_image`.

    Returns:
        SHA-256 of each stage's image (the reference measurements).
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    digests: dict[str, bytes] = {}
    for stage in BOOT_CHAIN:
        image = (images or {}).get(stage.name) or simulated_image(stage.name, version)
        digest = hashlib.sha256(image).digest()
        signed = manifest_message(stage.name, version, digest, len(image))
        atomic_write(target / f"{stage.name}.img", image)
        atomic_write(target / f"{stage.name}.manifest", cbor2.dumps([signed, sign(signed)]))
        digests[stage.name] = digest
    return digests


def reference_digests(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """SHA-256 of each stage's image in an image set (what a good boot measures)."""
    target = Path(directory)
    return {s.name: hashlib.sha256((target / f"{s.name}.img").read_bytes()).digest() for s in BOOT_CHAIN}
