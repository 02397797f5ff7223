"""``python -m tests.e2e.recording_hub hub``: ``iotguard hub`` that appends every device request it verified to the
file named by ``IOTGUARD_TEST_RECORD`` (one CBOR item ``[action, body]`` each): the instrument of the learning end
to end, the same spy the in-process tests put on ``DevicePlane.verify``, inside a real hub process."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

import cbor2

from iotguard.cli.main import main
from iotguard.hub.device_plane import DevicePlane
from iotguard.identity import VerifiedRequest

_verify = DevicePlane.verify
_lock = threading.Lock()


def _recording_verify(self: DevicePlane, action: str, wire: Mapping[str, Any], client: str) -> VerifiedRequest:
    req = _verify(self, action, wire, client)
    item = cbor2.dumps([action, dict(req.body)])
    with _lock, open(os.environ["IOTGUARD_TEST_RECORD"], "ab") as f:
        f.write(item)
    return req


if __name__ == "__main__":
    DevicePlane.verify = _recording_verify  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
