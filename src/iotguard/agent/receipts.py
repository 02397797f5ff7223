"""Privacy receipts from the agent's durable outbox to the hub, retried until the hub has them.

A signed receipt is written to the outbox (SQLite, the same file as the
readings) before it is sent, and leaves it only when the hub answers:

* ``200``: stored (the hub stores a receipt once: a resend of one it already
  holds is answered 200 too, so a lost answer cannot duplicate it);
* a refusal that can never turn into a success (:data:`FINAL_CODES`: the
  receipt malformed, its or the request's signature bad, over the contract's
  budget, the device unknown or revoked): dropped, logged and counted by
  reason (``ReceiptSender.dropped``);
* anything else - the hub unreachable, failing (5xx: ``storage_error`` while
  its database is down, an internal error), rate-limiting, or refusing the
  *request* rather than the receipt (``stale`` while the device's clock is
  off, ``policy_denied`` while quarantined): the receipt stays, sending stops
  for this round, and the next attempt waits a back-off (doubling from
  :data:`RETRY_MIN_S` to :data:`RETRY_MAX_S`), as readings wait for their
  acknowledgement. Each retry is a new signed request (new nonce and time).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from iotguard.agent.outbox import Outbox

__all__ = ["FINAL_CODES", "RETRY_MAX_S", "RETRY_MIN_S", "ReceiptSender", "SendResult", "is_final"]

log = logging.getLogger(__name__)

RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0
#: Refusals after which the same receipt can never be stored.
FINAL_CODES = frozenset({"malformed", "forged", "unauthenticated", "budget_exhausted", "unknown_device",
                         "revoked"})


@dataclass(frozen=True)
class SendResult:
    """The hub's answer to one receipt: HTTP status and error code (``""`` on success)."""

    status: int
    code: str = ""


def is_final(result: SendResult) -> bool:
    """True when the hub refused for good (a 4xx with a code of :data:`FINAL_CODES`)."""
    return 400 <= result.status < 500 and result.code in FINAL_CODES


#: Sends one receipt blob; raises httpx.HTTPError when the hub cannot be reached.
Send = Callable[[bytes], SendResult]


class ReceiptSender:
    """Sends the outbox's receipts oldest first; see the module docstring."""

    def __init__(self, outbox: Outbox, send: Send, device_id: str, monotonic: Callable[[], float]) -> None:
        self.outbox = outbox
        self.send = send
        self.device_id = device_id
        self.monotonic = monotonic
        self.dropped: Counter[str] = Counter()
        self.delivered = 0
        #: Times the hub failed or was unreachable and the pending receipts were kept for a retry.
        self.kept = 0
        self._delay = 0.0
        self._not_before = 0.0

    @property
    def pending(self) -> int:
        return len(self.outbox.receipts())

    def flush(self, *, force: bool = False) -> int:
        """Send what is pending unless backing off (``force`` ignores the back-off); returns how many the hub took."""
        if not force and self.monotonic() < self._not_before:
            return 0
        taken = 0
        for receipt_id, blob in self.outbox.receipts():
            try:
                result = self.send(blob)
            except httpx.HTTPError as exc:
                self._back_off(f"hub unreachable ({type(exc).__name__})")
                return taken
            if result.status == 200:
                self.outbox.remove_receipt(receipt_id)
                taken += 1
                self.delivered += 1
                continue
            if not is_final(result):
                self._back_off(f"HTTP {result.status} {result.code}")
                return taken
            log.warning("%s: hub refused a privacy receipt (HTTP %d %s); it can never be stored, dropping it",
                        self.device_id, result.status, result.code)
            self.dropped[result.code or str(result.status)] += 1
            self.outbox.remove_receipt(receipt_id)
        self._delay = 0.0
        self._not_before = 0.0
        return taken

    def _back_off(self, why: str) -> None:
        self.kept += 1
        self._delay = min(RETRY_MAX_S, max(RETRY_MIN_S, self._delay * 2))
        self._not_before = self.monotonic() + self._delay
        log.info("%s: privacy receipts kept for a retry in %.0f s: %s", self.device_id, self._delay, why)
