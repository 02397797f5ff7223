"""Playbooks: declarative, versioned files mapping alert conditions to response actions.

A playbook is TOML (see ``docs/detection.md`` for the reference)::

    format = "iotguard-playbook/1"
    name = "default-response"
    revision = 3

    [guard_rails]
    blast_radius_percent = 10.0
    blast_radius_min_devices = 1
    cooldown_s = 900
    approval = ["revoke", "rollback"]
    auto_release = true

    [notify]
    webhook = "https://soc.example.org/hooks/iotguard"

    [[rules]]
    name = "scanner"
    detectors = ["scan_fanout", "autoencoder"]
    min_severity = "high"
    actions = ["quarantine", "reattest", "notify"]

Parsing is strict: unknown keys, wrong types, out-of-range numbers, unknown
actions or detectors and duplicate rule names are all rejected with a
``playbook_invalid`` :class:`~iotguard.errors.ConfigError` naming the place.
Destructive actions (``revoke``, ``rollback``) always wait for approval
unless ``unsafe_auto_destructive = true``, which :attr:`Playbook.unsafe`
reports so the caller can log it loudly.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

from iotguard.detection.alert import Alert, Severity
from iotguard.errors import ConfigError

__all__ = [
    "DESTRUCTIVE",
    "DETECTORS",
    "MAX_PLAYBOOK_BYTES",
    "PLAYBOOK_FORMAT",
    "ActionKind",
    "GuardRails",
    "Playbook",
    "PlaybookRule",
    "default_playbook",
    "parse_playbook",
]

PLAYBOOK_FORMAT = "iotguard-playbook/1"
MAX_PLAYBOOK_BYTES = 256 * 1024
_MAX_RULES = 256


class ActionKind(StrEnum):
    """What a playbook can make the hub do to a device."""

    QUARANTINE = "quarantine"
    REVOKE = "revoke"
    REATTEST = "reattest"
    ROLLBACK = "rollback"
    NOTIFY = "notify"
    RELEASE = "release"


#: Actions that are hard to undo; they wait for approval unless explicitly (and unsafely) allowed.
DESTRUCTIVE: frozenset[ActionKind] = frozenset({ActionKind.REVOKE, ActionKind.ROLLBACK})
#: Detector names a rule may match.
DETECTORS: frozenset[str] = frozenset({
    "autoencoder", "scan_fanout", "new_port", "beaconing", "known_bad_address", "credential_guessing",
    "cloned_device", "inbound_probing",
    "process_change", "new_listening_port", "new_destination", "health_anomaly", "auth_failures",
    "policy_denials", "attestation_failed", "attestation_degraded",
})


@dataclass(frozen=True)
class GuardRails:
    """Limits on what a playbook does by itself.

    Attributes:
        blast_radius_percent: Automatic quarantines per segment at most this share of its devices ...
        blast_radius_min_devices: ... but at least this many (small segments).
        cooldown_s: The same action on the same device is not repeated within this time.
        approval: Actions that wait for an operator.
        auto_release: Release a playbook quarantine once the device attests clean after it ...
        unsafe_auto_destructive: Let revoke/rollback run without approval.
        release_quiet_s: ... and no alert was raised on it for this long: a clean boot chain says
            nothing about malware that lives in memory, which goes on alerting while it runs.
    """

    blast_radius_percent: float = 10.0
    blast_radius_min_devices: int = 1
    cooldown_s: float = 900.0
    approval: frozenset[ActionKind] = DESTRUCTIVE
    auto_release: bool = True
    unsafe_auto_destructive: bool = False
    release_quiet_s: float = 1800.0


@dataclass(frozen=True)
class PlaybookRule:
    """Alerts that match ``detectors`` (empty: any), severity, score and device models get ``actions``."""

    name: str
    actions: tuple[ActionKind, ...]
    detectors: frozenset[str] = frozenset()
    min_severity: Severity = Severity.LOW
    min_score: float = 0.0
    models: frozenset[str] = frozenset()

    def matches(self, alert: Alert, model: str | None) -> bool:
        """Whether ``alert`` (on a device of ``model``) triggers this rule."""
        if self.detectors and alert.detector not in self.detectors:
            return False
        if alert.severity < self.min_severity or alert.score < self.min_score:
            return False
        return not self.models or (model is not None and model in self.models)


@dataclass(frozen=True)
class Playbook:
    """A validated playbook."""

    name: str
    revision: int
    rules: tuple[PlaybookRule, ...]
    guard_rails: GuardRails
    webhook: str | None = None

    @property
    def unsafe(self) -> list[str]:
        """Names of the unsafe options that are on (to log loudly)."""
        return ["unsafe_auto_destructive"] if self.guard_rails.unsafe_auto_destructive else []


def _err(where: str, what: str) -> ConfigError:
    return ConfigError(f"playbook {where}: {what}", code="playbook_invalid")


def _keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _err(where, f"unknown key(s) {', '.join(unknown)}")


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in table:
        if default is None:
            raise _err(where, f"{key} is required")
        return default
    value = table[key]
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _err(where, f"{key} has the wrong type")
    if not isinstance(value, kind):
        raise _err(where, f"{key} has the wrong type")
    return value


def _name(value: str, where: str) -> str:
    if not 0 < len(value) <= 64 or not all(c.isalnum() or c in "-_." for c in value):
        raise _err(where, "names are 1-64 characters of letters, digits, '-', '_', '.'")
    return value


def _actions(values: list[Any], where: str) -> tuple[ActionKind, ...]:
    if not values or not all(isinstance(v, str) for v in values):
        raise _err(where, "actions must be a non-empty list of names")
    try:
        kinds = tuple(ActionKind(v) for v in values)
    except ValueError:
        raise _err(where, f"unknown action; known: {', '.join(k.value for k in ActionKind)}") from None
    if len(set(kinds)) != len(kinds):
        raise _err(where, "an action is listed twice")
    if ActionKind.RELEASE in kinds:
        raise _err(where, "release is automatic (guard_rails.auto_release), not a rule action")
    return kinds


def _guard_rails(table: dict[str, Any]) -> GuardRails:
    where = "[guard_rails]"
    _keys(table, {"blast_radius_percent", "blast_radius_min_devices", "cooldown_s", "approval", "auto_release",
                  "release_quiet_s", "unsafe_auto_destructive"}, where)
    pct = float(_get(table, "blast_radius_percent", (int, float), where, 10.0))
    min_devices = _get(table, "blast_radius_min_devices", int, where, 1)
    cooldown = float(_get(table, "cooldown_s", (int, float), where, 900.0))
    quiet = float(_get(table, "release_quiet_s", (int, float), where, 1800.0))
    unsafe = _get(table, "unsafe_auto_destructive", bool, where, False)
    if (not 0 <= pct <= 100 or not 0 <= min_devices <= 10_000 or not 0 <= cooldown <= 30 * 86400
            or not 0 <= quiet <= 30 * 86400):
        raise _err(where, "blast_radius_percent 0..100, blast_radius_min_devices 0..10000, cooldown_s and "
                          "release_quiet_s 0..30 days")
    approval_list = _get(table, "approval", list, where, [k.value for k in DESTRUCTIVE])
    approval = frozenset(_actions(approval_list, where + " approval")) if approval_list else frozenset()
    missing = DESTRUCTIVE - approval
    if missing and not unsafe:
        raise _err(where, f"{', '.join(sorted(missing))} must need approval unless unsafe_auto_destructive = true")
    return GuardRails(pct, min_devices, cooldown, approval, _get(table, "auto_release", bool, where, True), unsafe,
                      release_quiet_s=quiet)


def _rule(table: Any, i: int) -> PlaybookRule:
    where = f"[[rules]] #{i + 1}"
    if not isinstance(table, dict):
        raise _err(where, "must be a table")
    _keys(table, {"name", "detectors", "min_severity", "min_score", "models", "actions"}, where)
    name = _name(_get(table, "name", str, where), where)
    where = f"rule {name!r}"
    detectors = _get(table, "detectors", list, where, [])
    if not all(isinstance(d, str) and d in DETECTORS for d in detectors):
        raise _err(where, f"unknown detector; known: {', '.join(sorted(DETECTORS))}")
    models = _get(table, "models", list, where, [])
    if not all(isinstance(m, str) for m in models):
        raise _err(where, "models must be names")
    try:
        severity = Severity.parse(_get(table, "min_severity", str, where, "low"))
    except Exception:
        raise _err(where, "min_severity is one of low, medium, high, critical") from None
    min_score = float(_get(table, "min_score", (int, float), where, 0.0))
    return PlaybookRule(name, _actions(_get(table, "actions", list, where), where), frozenset(detectors),
                        severity, min_score, frozenset(_name(m, where) for m in models))


def parse_playbook(data: bytes) -> Playbook:
    """Parse and validate a playbook file's bytes.

    Raises:
        ConfigError: ``playbook_invalid`` with where and what.
    """
    if len(data) > MAX_PLAYBOOK_BYTES:
        raise _err("file", f"larger than {MAX_PLAYBOOK_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _err("file", f"not valid TOML ({exc})") from None
    _keys(doc, {"format", "name", "revision", "guard_rails", "notify", "rules"}, "top level")
    if doc.get("format") != PLAYBOOK_FORMAT:
        raise _err("top level", f"format must be {PLAYBOOK_FORMAT!r}")
    name = _name(_get(doc, "name", str, "top level"), "top level")
    revision = _get(doc, "revision", int, "top level")
    if not 1 <= revision < 2**31:
        raise _err("top level", "revision must be a positive integer")
    rails = _guard_rails(_get(doc, "guard_rails", dict, "top level", {}))
    rules_raw = _get(doc, "rules", list, "top level")
    if not 0 < len(rules_raw) <= _MAX_RULES:
        raise _err("top level", f"1..{_MAX_RULES} [[rules]] required (an empty playbook is an error)")
    rules = tuple(_rule(r, i) for i, r in enumerate(rules_raw))
    if len({r.name for r in rules}) != len(rules):
        raise _err("top level", "rule names must be unique")
    webhook = None
    notify = _get(doc, "notify", dict, "top level", {})
    _keys(notify, {"webhook"}, "[notify]")
    if notify:
        webhook = _get(notify, "webhook", str, "[notify]")
        if not webhook.startswith("https://") or len(webhook) > 512 or not webhook.isprintable():
            raise _err("[notify]", "webhook must be an https:// URL")
    if webhook is None and any(ActionKind.NOTIFY in r.actions for r in rules):
        raise _err("[notify]", "a rule notifies but no webhook is configured")
    return Playbook(name, revision, rules, rails, webhook)


def default_playbook() -> Playbook:
    """The playbook shipped with iotguard (``default_playbook.toml``)."""
    return parse_playbook(resources.files("iotguard.detection").joinpath("default_playbook.toml").read_bytes())
