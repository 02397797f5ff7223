"""A device's part in a hub-coordinated secure-aggregation round, over signed ``aggregate`` requests.

:class:`RoundClient` wraps :class:`~iotguard.analytics.secagg_round.Participant`:
:meth:`RoundClient.step` advertises once, then polls the hub and sends the
current phase's message (sealed share boxes, the masked vector, unmasking
shares). The device's value leaves it only masked.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import cbor2
import numpy as np

from iotguard.analytics.he_round import encrypt_for_round
from iotguard.analytics.secagg import AggregationError, Vector
from iotguard.analytics.secagg_round import MAX_MESSAGE_BYTES, Participant, encode_message

__all__ = ["AGGREGATE_PATH", "HeClient", "RoundClient"]

AGGREGATE_PATH = "/v1/aggregate"

#: Sends a signed ``aggregate`` request body to the hub and returns its JSON reply
#: (``lambda body: agent.request("aggregate", AGGREGATE_PATH, body)``).
Send = Callable[[dict[str, Any]], dict[str, Any]]


class RoundClient:
    """One device in one round.

    Args:
        send: The signed-request sender.
        round_id: The round's id (hex, from the operator's invitation).
        value: The device's vector (integers modulo 2^32).
    """

    def __init__(self, send: Send, round_id: str, value: Vector) -> None:
        self._send = send
        self.round_id = round_id
        self.participant = Participant(bytes.fromhex(round_id), np.asarray(value, dtype=np.uint32))
        self.phase = "advertise"

    def _request(self, step: str, message: bytes) -> dict[str, Any]:
        return self._send({"round": self.round_id, "step": step, "message": message})

    def step(self) -> str:
        """Advertise (first call), else poll and answer the current phase; returns the phase the hub reported.

        Raises:
            AggregationError: the hub's reply is malformed, or a peer's share box does not open.
            EnrollmentError: the hub refused the request.
        """
        if "advertise" not in self.participant.done:
            self.phase = str(self._request("advertise", self.participant.advertise()).get("phase", ""))
            return self.phase
        poll = _poll_reply(self._request("poll", b""))
        self.phase = str(poll.get("phase", ""))
        answer = self.participant.answer(poll)
        if answer is not None:
            self.phase = str(self._request(*answer).get("phase", self.phase))
        return self.phase


class HeClient:
    """One device in one homomorphic-sum round: fetches the public key, sends its encrypted vector once, in parts.

    Args:
        send: The signed-request sender.
        round_id: The round's id (hex).
        values: The device's values (integers in ``[0, 2^value_bits)``).
    """

    def __init__(self, send: Send, round_id: str, values: list[int]) -> None:
        self._send = send
        self.round_id = round_id
        self._values = list(values)
        self._upload = b""
        self._messages: list[bytes] = []
        self.sent = False

    def _poll(self, message: bytes) -> dict[str, Any]:
        return _poll_reply(self._send({"round": self.round_id, "step": "he_poll", "message": message}))

    def step(self) -> str:
        """Poll; when the round asks for it, encrypt (once) and send the parts the hub lacks. Returns the phase.

        Raises:
            AggregationError: the hub's reply is malformed.
            EnrollmentError: the hub refused the request.
        """
        poll = self._poll(b"")
        phase = str(poll.get("phase", ""))
        if phase != "submit" or self.sent:
            return phase
        if not self._messages:
            rows = poll.get("key_rows")
            if not isinstance(rows, int) or not 1 <= rows <= 16:
                raise AggregationError("message_malformed", "HE poll: key_rows")
            key = []
            for j in range(rows):
                reply = self._poll(encode_message({"key_row": j}))
                if reply.get("key_row") != j or not isinstance(reply.get("words"), bytes):
                    raise AggregationError("message_malformed", "HE poll: key row")
                key.append(reply["words"])
            self._upload, self._messages = encrypt_for_round(poll, key, self._values)
        missing = poll.get("missing")
        if poll.get("upload") != self._upload or not isinstance(missing, list):
            missing = list(range(len(self._messages)))  # the hub holds none of this upload
        for i in missing:
            if not isinstance(i, int) or not 0 <= i < len(self._messages):
                raise AggregationError("message_malformed", "HE poll: missing part")
            phase = str(self._send({"round": self.round_id, "step": "he_submit",
                                    "message": self._messages[i]}).get("phase", phase))
        self.sent = True
        return phase


def _poll_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """The CBOR map a poll reply carries (base64url).

    Raises:
        AggregationError: ``message_malformed``.
    """
    raw = reply.get("message")
    if not isinstance(raw, str) or len(raw) > 2 * MAX_MESSAGE_BYTES:
        raise AggregationError("message_malformed", "poll reply")
    try:
        poll = cbor2.loads(base64.urlsafe_b64decode(raw))
    except (ValueError, cbor2.CBORDecodeError):
        raise AggregationError("message_malformed", "poll reply is not CBOR") from None
    if not isinstance(poll, dict):
        raise AggregationError("message_malformed", "poll reply is not a map")
    return poll
