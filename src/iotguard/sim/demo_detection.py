"""The demo's detection-and-response step: a device turns into a scanner, the hub contains it.

A network sensor is enrolled like a device (model ``iotguard-sensor``) and
sends the fleet's flows as signed ``report_flows`` requests, the path
``iotguard sensor`` takes; the operator's address inventory names the
device behind each simulated address. :meth:`DetectionStep.learn` reports
simulated benign traffic of the fleet (:mod:`iotguard.sim.traffic`, per
device model) for the minutes before the run: the start of the hub's flow
monitor's learning window, in which the rules that need no baseline already
alert. :meth:`DetectionStep.scanner` then has one device
stop its telemetry and scan for telnet like Mirai, reported together with
the other devices' benign traffic of the run, and checks what followed:
the ``scan_fanout`` alert, the playbook's actions, the broker refusing the
device's next publish (which never reaches the hub), the alert in the audit
log with an inclusion proof against a signed checkpoint, and no other fleet
device alerted or quarantined. Operator reads go through the HTTPS API.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from iotguard.agent import Agent
from iotguard.audit import AuditEvent, NoteVerifier
from iotguard.audit.verify import InclusionBundle, verify_inclusion_bundle
from iotguard.config import AgentConfig
from iotguard.detection import FlowBatch, MonitorConfig
from iotguard.errors import IotGuardError
from iotguard.hub.services.sensing import ADDRESS_INVENTORY_FILE, SENSOR_MODEL
from iotguard.sensor import FlowSender
from iotguard.sim import traffic
from iotguard.sim.delivery import stored_identities
from iotguard.sim.fleet import Fleet
from iotguard.wire import Reading, encode_reading

if TYPE_CHECKING:
    from iotguard.hub.service import Hub

__all__ = ["SECURITY_ROLE", "DetectionStep", "contained", "detection_lines"]

#: Operator role of the step's token: alerts and the audit log (``view_alerts``, ``view_audit``).
SECURITY_ROLE = "security-admin"
#: Traffic profile of each simulated sensor model (:data:`iotguard.sim.traffic.PROFILES`).
_PROFILE = {"thermo-1": "thermo", "motion-1": "motion", "meter-1": "meter", "wear-1": "wearable",
            "tracker-1": "tracker"}
#: Seconds of scanning reported (Mirai's rate: about 40 SYNs a second).
_SCAN_S = 10.0
#: Most seconds of the run's benign traffic reported with the scan.
_LIVE_S = 60.0

Say = Callable[[str], None]


def _address(i: int) -> str:
    return f"10.20.{i // 250}.{i % 250 + 1}"


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class DetectionStep:
    """The sensor, the fleet's addresses and the learning window; then the scanner.

    Args:
        hub: The running hub (in this process).
        fleet: The simulated fleet (its devices get addresses in 10.20.0.0/16).
        api: HTTPS client carrying a security admin's token.
        root: Where the sensor keeps its state.
        sensor_id: The sensor's device id.
        enroll: Registers a device and returns its enrollment code.
    """

    def __init__(self, hub: Hub, fleet: Fleet, api: httpx.Client, root: Path, sensor_id: str,
                 enroll: Callable[[str, str], str]) -> None:
        self.hub = hub
        self.fleet = fleet
        self.api = api
        self.sims = [traffic.SimDevice(d.agent.device_id, _PROFILE.get(d.model, "thermo"), _address(i), "default")
                     for i, d in enumerate(fleet.devices)]
        # The operator's address inventory: which device is behind which address.
        (Path(hub.cfg.data_dir) / ADDRESS_INVENTORY_FILE).write_text(
            "".join(f"{s.address} {s.device_id}\n" for s in self.sims))
        self.sensor = Agent(AgentConfig(data_dir=str(root / sensor_id), hub_url=fleet.hub_url,
                                        broker_url=fleet.broker_url, suites=[fleet.suites[0]]), sensor_id)
        self.sensor.enroll(enroll(sensor_id, SENSOR_MODEL))
        self.learning = True
        self.sender = FlowSender(self._post)
        self.learned: dict[str, Any] = {}

    def _post(self, report: bytes) -> httpx.Response:
        r = self.sensor.signed_request("report_flows", "/v1/flows", {"flows": report})
        if r.status_code == 200:
            self.learning = bool(r.json().get("learning", True))
        return r

    def learn(self, say: Say) -> dict[str, Any]:
        """Report the fleet's benign traffic of the minutes before now: the start of the monitor's learning window.

        The hub's flow monitor learns its baselines from its first ``learn_flows`` flows spanning at least
        ``learn_s`` seconds of flow time (two hours: ADR 0710). The demo sends a few minutes of it and stays in
        the window, where the rules that need no baseline (scan fan-out, known-bad addresses) alert and the
        learned ones do not yet.
        """
        config = MonitorConfig()
        window = config.learn_flows
        rate = sum(1.0 / traffic.PROFILES[s.model].period_s for s in self.sims)  # telemetry flows a second
        seconds = min(0.4 * window / rate, 0.4 * config.learn_s)
        flows = traffic.benign_traffic(self.sims, time.time() - seconds, seconds, seed=11).flows
        self.sender.send(FlowBatch.from_flows(flows))
        self.learned = {"flows": len(flows), "simulated_minutes": round(seconds / 60, 1), "devices": len(self.sims),
                        "learning_window_flows": window, "learning_window_s": config.learn_s,
                        "still_learning": self.learning,
                        "alerts": self.sender.alerts}
        say(f"detection: a sensor reported {len(flows)} flows of the fleet's last {seconds / 60:.0f} simulated minutes "
            f"(benign traffic per device model); the hub learns its baselines from its first {window} flows "
            f"over at least {config.learn_s / 3600:g} h of flow time "
            f"({'still learning' if self.learning else 'learned'}: until then only the rules that need no "
            f"baseline alert, scan fan-out among them)")
        return self.learned

    def scanner(self, since: float, say: Say) -> dict[str, Any]:
        """One device stops its telemetry and scans; returns what the hub did about it.

        ``since`` (epoch seconds) is where the run's benign traffic starts.
        """
        victim = self.sims[len(self.sims) // 2]
        dev = next(d for d in self.fleet.devices if d.agent.device_id == victim.device_id)
        # The device's telemetry so far is acknowledged and its receipt sent, then it leaves the schedule.
        deadline = time.monotonic() + 30.0
        while dev.agent.pending() and time.monotonic() < deadline:
            dev.agent.resend_due()
            time.sleep(0.1)
        if dev.agent.pending():  # what it still owes would be refused at the broker and counted lost
            raise IotGuardError(f"{victim.device_id}'s readings not acknowledged in time", code="demo_step_failed")
        if dev.agent.send_receipt(force=True):
            self.fleet.receipts_sent += 1
        self.fleet.retire(victim.device_id)
        stored_before = self._stored(victim.device_id)
        front = self.hub.embedded_broker.front if self.hub.embedded_broker is not None else None
        denied_before = front.refused["publish_denied"] if front is not None else 0
        size_before = self._log_size()
        now = time.time()
        others = [s for s in self.sims if s is not victim]
        since = max(since, now - _LIVE_S)
        flows = traffic.benign_traffic(others, since, max(1.0, now - since), seed=12).merged(
            traffic.mirai_scan(victim, now, _SCAN_S)).flows
        alerts_before = self.sender.alerts
        self.sender.send(FlowBatch.from_flows(flows))
        alerts = self._check(self.api.get("/v1/alerts", params={"limit": 1000}))
        scan = next((a for a in alerts if a["detector"] == "scan_fanout" and a["device"] == victim.device_id), None)
        out: dict[str, Any] = {"device": victim.device_id, "address": victim.address, "flows_reported": len(flows),
                               "alerts_raised": self.sender.alerts - alerts_before, "alert": None, "actions": {},
                               "stored_before": stored_before}
        if scan is None:
            say(f"detection: no scan_fanout alert on {victim.device_id}")
            return out
        actions = self._check(self.api.get(f"/v1/alerts/{scan['alert_id']}"))["actions"]
        out["alert"] = {"id": scan["alert_id"], "detector": scan["detector"], "severity": scan["severity"]}
        out["actions"] = {a["kind"]: a["outcome"] for a in actions}
        say(f"detection: {victim.device_id} ({victim.address}) turned scanner: {len(flows)} flows reported, "
            f"alert {scan['detector']} ({scan['severity']}); playbook "
            f"{', '.join(f'{k} {v}' for k, v in out['actions'].items())}")
        out["broker"] = self._publish_after(dev.agent, victim.device_id, stored_before, denied_before)
        out["audit"] = self._audited(scan["alert_id"], size_before)
        fleet_ids = {d.agent.device_id for d in self.fleet.devices} | {victim.device_id}
        posture = self.hub.services.posture.posture
        alerts = self._check(self.api.get("/v1/alerts", params={"limit": 1000}))
        out["alerted_devices"] = sorted({a["device"] for a in alerts} & fleet_ids)
        out["other_alerts"] = sorted({(a["device"], a["detector"]) for a in alerts
                                      if a["device"] in fleet_ids and a["device"] != victim.device_id})
        out["quarantined_devices"] = sorted(p.device_id for p in posture if p.quarantined and p.device_id in fleet_ids)
        out["monitor_still_learning"] = self.learning
        out["contained"] = (out["actions"].get("quarantine") == "done" and out["broker"]["not_delivered"]
                            and out["audit"]["inclusion_verified"]
                            and out["alerted_devices"] == [victim.device_id]
                            and out["quarantined_devices"] == [victim.device_id])
        say(f"detection: broker refused its next publish: {out['broker']['not_delivered']}; alert in the audit log, "
            f"inclusion proven against checkpoint {out['audit']['tree_size']}: {out['audit']['inclusion_verified']}; "
            f"fleet devices alerted {out['alerted_devices']}, quarantined {out['quarantined_devices']}")
        return out

    def _stored(self, device_id: str) -> int:
        return sum(1 for d, _ in stored_identities(self.hub.store) if d == device_id)

    def _publish_after(self, agent: Agent, device_id: str, stored_before: int, denied_before: int) -> dict[str, Any]:
        """The device seals one more reading and publishes it on its own topic once the broker took its grant away."""
        front = self.hub.embedded_broker.front if self.hub.embedded_broker is not None else None
        topic = agent.sealer.topic
        revoked = front is not None and _wait(lambda: not front.access.acl.may_publish(device_id, topic), 10.0)
        reconnected = _wait(lambda: agent.connected, 15.0)
        _seq, envelope = agent.sealer.seal(encode_reading(Reading(int(time.time() * 1000), {"value": 1.0},
                                                                  "telemetry")))
        published = agent.publish_raw(topic, envelope)
        denied = front is not None and _wait(lambda: front.refused["publish_denied"] > denied_before, 5.0)
        time.sleep(0.5)
        stored_after = self._stored(device_id)
        return {"grant_removed": revoked, "published": published and reconnected, "refused_by_broker": denied,
                "stored_after": stored_after,
                "not_delivered": revoked and published and denied and stored_after == stored_before}

    def _log_size(self) -> int:
        note = self._check_text(self.api.post("/audit/checkpoint"))
        return int(note.split("\n", 2)[1])

    def _audited(self, alert_id: str, start: int) -> dict[str, Any]:
        """Find the alert's entry in the log, prove its inclusion against a signed checkpoint, verify offline."""
        key = NoteVerifier.from_vkey(self.hub.services.audit.log.verifier.vkey())  # the auditor's copy of the key
        deadline = time.monotonic() + 15.0
        while True:
            checkpoint = self._check_text(self.api.post("/audit/checkpoint"))
            size = int(checkpoint.split("\n", 2)[1])
            index = self._find(alert_id, start, size)
            if index is not None or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        if index is None:
            return {"inclusion_verified": False, "tree_size": size, "index": None}
        proof = self._check(self.api.get("/audit/proof/inclusion", params={"index": index, "tree_size": size}))
        entry = self._entries(index, index + 1)[0]
        event = verify_inclusion_bundle(
            InclusionBundle(checkpoint, index, entry, [base64.b64decode(h) for h in proof["proof"]]), key)
        return {"inclusion_verified": event.type == "detection.alert" and event.details.get("alert_id") == alert_id,
                "tree_size": size, "index": index}

    def _entries(self, start: int, end: int) -> list[bytes]:
        return [base64.b64decode(e) for e in self._check(self.api.get(
            "/audit/entries", params={"start": start, "end": end}))["entries"]]

    def _find(self, alert_id: str, start: int, end: int) -> int | None:
        at = start
        while at < end:
            batch = self._entries(at, end)
            if not batch:
                return None
            for i, raw in enumerate(batch):
                event = AuditEvent.from_cbor(raw)
                if event.type == "detection.alert" and event.details.get("alert_id") == alert_id:
                    return at + i
            at += len(batch)
        return None

    @staticmethod
    def _check(r: httpx.Response) -> Any:
        if r.status_code != 200:
            raise IotGuardError(f"hub answered {r.status_code}: {r.text[:200]}", code="demo_step_failed")
        return r.json()

    @staticmethod
    def _check_text(r: httpx.Response) -> str:
        if r.status_code != 200:
            raise IotGuardError(f"hub answered {r.status_code}: {r.text[:200]}", code="demo_step_failed")
        return r.text

    def close(self) -> None:
        self.sensor.close()
        self.api.close()


def contained(d: dict[str, Any]) -> bool:
    """The scanner was alerted on, quarantined, cut off at the broker and audited, alone, and still is at the end."""
    return bool(d["scanner"].get("contained")) and bool(d["quarantined_at_end"])


def detection_lines(d: dict[str, Any]) -> list[str]:
    """The demo's text summary lines of the step's summary ``d`` (none when the step did not run)."""
    if not d:
        return []
    sc = d["scanner"]
    if not sc.get("alert"):
        return [f"scanner            NOT contained ({sc.get('error', 'no alert')})"]
    others = [x for x in sc["alerted_devices"] if x != sc["device"]]
    return [f"scanner            {sc['device']}: {sc['alert']['detector']} alert; "
            f"{', '.join(f'{k} {v}' for k, v in sc['actions'].items())}",
            f"                   broker refused its next publish {sc['broker']['not_delivered']}; alert in the "
            f"audit log, inclusion proven {sc['audit']['inclusion_verified']}; still quarantined at the end "
            f"{d['quarantined_at_end']}; other fleet devices alerted: {', '.join(others) or 'none'}"]
