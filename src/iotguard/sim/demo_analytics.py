"""The demo's private-analytics step, over the hub's real API and the devices' real ``aggregate`` requests.

:func:`run_analytics` runs three things on a running hub and fleet:

* a **secure-aggregation round** (``POST /v1/aggregate/rounds``): every
  device contributes the counts of the readings it sealed, by purpose; a
  third of the devices vanish after sharing their keys, and the sum the hub
  unmasks must equal the sum of the survivors' vectors, which the demo
  computes from what it gave the devices (the hub never sees one vector);
* a **homomorphic-sum round** (``POST /v1/aggregate/he-rounds``): the demo
  plays the independent decryptor (its key share made as ``iotguard
  aggregate decryptor-keygen`` makes it, kept here, never given to the hub),
  the devices send encrypted vectors, the hub adds ciphertexts and applies
  its own share, and the decryptor opens the sum (as ``iotguard aggregate
  open`` does);
* **central-DP queries** (``POST /v1/analytics/query``) over the readings
  the hub stored: how many asset trackers are in each area of about 20 km
  (the trackers' ``fleet_statistics`` purpose), answered; then the same
  count asked more precisely, which the privacy-loss ledger refuses because
  it would exceed the trackers' subjects' budget; a subject's ledger is read
  before and after the refusal to show it spent nothing.

Operator calls go through the hub's HTTPS API with operator tokens (Cedar
decides each); device steps are signed device requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from iotguard.agent.secagg import AGGREGATE_PATH, HeClient, RoundClient
from iotguard.analytics.he_round import new_decryptor_share, open_result
from iotguard.analytics.rlwe import RlweParams
from iotguard.errors import IotGuardError
from iotguard.privacy import load_contract
from iotguard.privacy.generalise import geohash
from iotguard.sim.fleet import Fleet, VirtualDevice

__all__ = ["ANALYST_ROLE", "LEDGER_ROLE", "analytics_lines", "analytics_ok", "purposes_of", "run_analytics"]

#: Operator roles the step's tokens carry: rounds and queries (``query``), ledgers (``manage_consent``).
ANALYST_ROLE = "analyst"
LEDGER_ROLE = "privacy-officer"
#: Bits of each value of the HE round (counts of readings, far below 2^16).
_HE_VALUE_BITS = 16
#: Devices encrypting and sending their HE vectors at once.
_HE_PARALLEL = 4
#: How long a device step loop may take before the step gives up (a hung round must not hang the demo).
_STEP_BUDGET_S = 120.0

Say = Callable[[str], None]


def purposes_of(fleet: Fleet) -> list[str]:
    """Every purpose the fleet's data contracts declare, sorted (the vectors' coordinates)."""
    return sorted({p for d in fleet.devices for p in load_contract(d.model).purposes})


def _counts(dev: VirtualDevice, purposes: list[str]) -> list[int]:
    return [int(dev.sealed_by_purpose.get(p, 0)) for p in purposes]


def _sender(dev: VirtualDevice) -> Callable[[dict[str, Any]], dict[str, Any]]:
    agent = dev.agent
    return lambda body: agent.request("aggregate", AGGREGATE_PATH, body)


def _check(r: httpx.Response) -> dict[str, Any]:
    if r.status_code != 200:
        raise IotGuardError(f"hub answered {r.status_code}: {r.text[:200]}", code="demo_step_failed")
    out = r.json()
    if not isinstance(out, dict):
        raise IotGuardError("hub answered no JSON object", code="demo_step_failed")
    return out


def _until(clients: dict[str, RoundClient], done: str, deadline: float) -> None:
    """Step every client until each has sent its ``done`` message (polling those whose phase has not come)."""
    waiting = dict(clients)
    while waiting:
        for device, c in list(waiting.items()):
            c.step()
            if done in c.participant.done:
                del waiting[device]
        if waiting:
            if time.monotonic() > deadline:
                raise IotGuardError(f"devices did not reach {done!r} in time: {sorted(waiting)[:3]}",
                                    code="demo_step_failed")
            time.sleep(0.05)


class _SecureRound:
    """A secure-aggregation round the step starts, drives up to the survivors' masked vectors, then finishes."""

    def __init__(self, api: httpx.Client, fleet: Fleet, purposes: list[str], phase_timeout_s: float) -> None:
        self.api = api
        devices = sorted(fleet.devices, key=lambda d: d.agent.device_id)
        self.values = {d.agent.device_id: _counts(d, purposes) for d in devices}
        # A third vanish after sharing: every third device, from the first.
        self.dropped = {d.agent.device_id for d in devices[::3][:len(devices) // 3]}
        body = {"devices": sorted(self.values), "dims": len(purposes), "phase_timeout_s": phase_timeout_s}
        self.round_id = str(_check(api.post("/v1/aggregate/rounds", json=body))["round"])
        self.clients = {d.agent.device_id: RoundClient(_sender(d), self.round_id,
                                                       np.asarray(self.values[d.agent.device_id], dtype=np.uint32))
                        for d in devices}
        self.survivors = {d: c for d, c in self.clients.items() if d not in self.dropped}

    def share(self, deadline: float) -> None:
        _until(self.clients, "advertise", deadline)
        _until(self.clients, "share", deadline)
        _until(self.survivors, "masked", deadline)  # the dropped are gone: the phase closes at its deadline

    def finish(self, deadline: float) -> dict[str, Any]:
        # The operator's view says when the masked phase has closed; until then the devices need not poll.
        while _check(self.api.get(f"/v1/aggregate/rounds/{self.round_id}")).get("phase") == "masked" \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        _until(self.survivors, "unmask", deadline)
        status = _check(self.api.get(f"/v1/aggregate/rounds/{self.round_id}"))
        while status.get("phase") not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
            status = _check(self.api.get(f"/v1/aggregate/rounds/{self.round_id}"))
        dims = len(next(iter(self.values.values())))
        expected = [sum(self.values[d][i] for d in self.survivors) for i in range(dims)]
        return {"round": self.round_id, "phase": status.get("phase"), "reason": status.get("reason", ""),
                "invited": len(self.clients), "dropped_after_sharing": len(self.dropped),
                "survivors": status.get("survivors", 0), "threshold": status.get("threshold", 0),
                "sum": status.get("sum"), "expected_sum": expected,
                "exact": status.get("phase") == "done" and status.get("sum") == expected}


def _he_round(api: httpx.Client, fleet: Fleet, purposes: list[str], deadline: float) -> dict[str, Any]:
    """The decryptor's key share, the round, every device's encrypted vector, the decryptor opening the sum."""
    devices = sorted(fleet.devices, key=lambda d: d.agent.device_id)
    share, key = new_decryptor_share()  # the decryptor's: the hub gets only the public part
    max_summands = max(2, len(devices))
    body = {"devices": [d.agent.device_id for d in devices], "dims": len(purposes), **key,
            "value_bits": _HE_VALUE_BITS, "max_summands": max_summands, "timeout_s": 300.0}
    round_id = str(_check(api.post("/v1/aggregate/he-rounds", json=body))["round"])
    values = {d.agent.device_id: _counts(d, purposes) for d in devices}
    def submit(d: VirtualDevice) -> None:
        client = HeClient(_sender(d), round_id, values[d.agent.device_id])
        while not client.sent:
            client.step()
            if time.monotonic() > deadline:
                raise IotGuardError("HE round: a device did not send in time", code="demo_step_failed")

    t0 = time.monotonic()
    # Devices encrypt and send side by side, as a fleet does (each is its own agent with its own connection).
    with ThreadPoolExecutor(max_workers=_HE_PARALLEL) as pool:
        for f in [pool.submit(submit, d) for d in devices]:
            f.result()
    sent_s = time.monotonic() - t0
    status = _check(api.get(f"/v1/aggregate/rounds/{round_id}"))
    expected = [sum(v[i] for v in values.values()) for i in range(len(purposes))]
    opened = open_result(status, RlweParams(_HE_VALUE_BITS, max_summands), share) \
        if status.get("phase") == "done" else None
    return {"round": round_id, "phase": status.get("phase"), "reason": status.get("reason", ""),
            "submitted": status.get("submitted", 0), "invited": len(devices), "sum": opened,
            "expected_sum": expected, "exact": opened == expected, "devices_sent_s": round(sent_s, 2)}


def _ledger(api: httpx.Client, subject: str) -> dict[str, Any]:
    return _check(api.get(f"/v1/analytics/budget/{subject}"))


#: The area the demo asks about: around Paris, where the simulated asset trackers are (:mod:`iotguard.sim.sensors`).
_AREA = ((48.5, 49.2), (2.0, 2.7))


def _areas() -> list[str]:
    """The geohash-4 cells (about 20 x 40 km) covering :data:`_AREA`: declared groups, never read from the data."""
    (lat0, lat1), (lon0, lon1) = _AREA
    steps = 15
    return sorted({geohash(lat0 + (lat1 - lat0) * i / steps, lon0 + (lon1 - lon0) * j / steps, 4)
                   for i in range(steps + 1) for j in range(steps + 1)})


def _query(epsilon: float) -> dict[str, Any]:
    """How many items are in each area: the trackers' ``fleet_statistics`` purpose, one reading per subject."""
    return {"statistic": "count", "field": "location", "epsilon": epsilon, "max_per_subject": 1,
            "purpose": "fleet_statistics", "group_by": "location", "groups": _areas()}


def _dp_queries(api: httpx.Client, ledger_api: httpx.Client, fleet: Fleet) -> dict[str, Any]:
    """A DP count per area, then the same count asked more precisely, which the ledger refuses, spending nothing.

    Only the readings of the declared areas are read and charged: the trackers' coarse ``fleet_statistics``
    locations (wearables are elsewhere; exact locations are not area names).
    """
    answered = api.post("/v1/analytics/query", json=_query(0.5))
    tracker = next((d for d in fleet.devices if d.model == "tracker-1"), None)
    if tracker is None:
        raise IotGuardError("no asset tracker in the fleet to count", code="demo_step_failed")
    before = _ledger(ledger_api, tracker.subject)
    excess = round(float(before["remaining_now"]) + 0.5, 3)  # more than the subject has left this period
    refused = api.post("/v1/analytics/query", json=_query(min(10.0, excess)))
    after = _ledger(ledger_api, tracker.subject)
    groups = answered.json().get("groups", {}) if answered.status_code == 200 else {}
    counts = {g: round(float(r["value"]), 1) for g, r in groups.items() if float(r["value"]) >= 0.5}
    reason = str(refused.json().get("error", "")) if refused.status_code != 200 else ""
    return {"answered": {"status": answered.status_code, "statistic": "count", "field": "location",
                         "purpose": "fleet_statistics", "epsilon": 0.5, "areas": len(_areas()),
                         "counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
                         "noise_scale": next((r.get("noise_scale") for r in groups.values()), None)},
            "refused": {"status": refused.status_code, "reason": reason, "epsilon": min(10.0, excess)},
            "subject": tracker.subject, "remaining_before": before["remaining_now"],
            "remaining_after": after["remaining_now"],
            "refusal_spent_nothing": (refused.status_code == 429 and reason == "budget_exhausted"
                                      and after["remaining_now"] == before["remaining_now"])}


def run_analytics(api: httpx.Client, ledger_api: httpx.Client, fleet: Fleet, say: Say) -> dict[str, Any]:
    """Secure aggregation with dropouts, an HE sum and central-DP queries; returns the summary's ``analytics``.

    ``api`` carries an analyst's token, ``ledger_api`` a privacy officer's (reading ledgers).
    """
    purposes = purposes_of(fleet)
    deadline = time.monotonic() + _STEP_BUDGET_S
    t0 = time.monotonic()
    # Each phase but the masked one closes as soon as every device has answered; the masked one waits out the
    # deadline for the devices that vanished. A late device would be left out (and fail the step), so the
    # deadline leaves room for a loaded machine: about 0.3 s a device where one signed request takes 20-50 ms.
    secure = _SecureRound(api, fleet, purposes, phase_timeout_s=max(10.0, 0.3 * len(fleet.devices)))
    secure.share(deadline)
    say(f"secure aggregation: {len(secure.clients)} devices shared keys for counts of their readings by purpose "
        f"({len(purposes)} purposes); {len(secure.dropped)} then vanished")
    # While the round waits out the vanished devices' deadline, the HE round and the queries run.
    he = _he_round(api, fleet, purposes, deadline)
    say(f"homomorphic sum: {he['submitted']} encrypted vectors added by the hub, opened by the decryptor's share: "
        f"{'exact' if he['exact'] else 'NOT exact'}")
    dp = _dp_queries(api, ledger_api, fleet)
    top = ", ".join(f"{g} {n:g}" for g, n in list(dp["answered"]["counts"].items())[:4])
    say(f"central DP: trackers per area of about 20 km (epsilon 0.5, purpose fleet_statistics; noisy counts, "
        f"scale {dp['answered']['noise_scale']}): {top or 'none'}; the same count "
        f"at epsilon {dp['refused']['epsilon']} refused ({dp['refused']['reason'] or dp['refused']['status']}), "
        f"{dp['subject']}'s ledger unchanged ({dp['remaining_after']} left): {dp['refusal_spent_nothing']}")
    sa = secure.finish(deadline)
    say(f"secure aggregation: sum of {sa['survivors']} survivors unmasked: {'exact' if sa['exact'] else 'NOT exact'}")
    return {"purposes": purposes, "secure_aggregation": sa, "he_sum": he, "dp": dp,
            "seconds": round(time.monotonic() - t0, 2)}


def analytics_ok(a: dict[str, Any]) -> bool:
    """Both sums exact, the DP query answered, the over-budget one refused without spending."""
    return ("error" not in a and bool(a["secure_aggregation"]["exact"]) and bool(a["he_sum"]["exact"])
            and a["dp"]["answered"]["status"] == 200 and bool(a["dp"]["refusal_spent_nothing"]))


def analytics_lines(a: dict[str, Any]) -> list[str]:
    """The demo's text summary lines of the step's summary ``a`` (none when the step did not run)."""
    if not a:
        return []
    if "error" in a:
        return [f"analytics          FAILED ({a['error']})"]
    sa, he, dp = a["secure_aggregation"], a["he_sum"], a["dp"]
    return [f"secure aggregate   {'exact' if sa['exact'] else 'NOT exact'}: the hub unmasked the sum of "
            f"{sa['survivors']} devices' reading counts by purpose ({sa['dropped_after_sharing']} of {sa['invited']} "
            f"dropped out after sharing), never one device's vector",
            f"homomorphic sum    {'exact' if he['exact'] else 'NOT exact'}: {he['submitted']} encrypted vectors "
            f"added by the hub, opened with the independent decryptor's key share",
            f"central DP         trackers per area answered ({dp['answered']['status']}, epsilon "
            f"{dp['answered']['epsilon']}); the same at epsilon {dp['refused']['epsilon']} "
            f"{dp['refused']['reason'] or 'NOT refused'}, spent nothing: {dp['refusal_spent_nothing']}"]
