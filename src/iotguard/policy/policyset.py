"""Policy sets, the schema, validation and diff.

A :class:`PolicySet` is Cedar text whose every policy carries a unique
``@id`` annotation: ids are what decisions report and what ``diff`` compares.
Nothing is activated before :func:`validate` has checked it against the
iotguard schema.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any

import cedarpy

from iotguard.errors import ConfigError

__all__ = [
    "PolicyDiff",
    "PolicySchema",
    "PolicySet",
    "PolicyValidationError",
    "default_policy_set",
    "default_roles",
    "default_schema",
    "diff_policy_sets",
    "validate",
]

_PACKAGE = "iotguard.policy"


class PolicyValidationError(ConfigError):
    """A policy set does not parse or does not validate against the schema.

    Attributes:
        errors: One message per problem, prefixed with the policy ``@id``
            where known.
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = list(errors or [])
        detail = "; ".join(self.errors[:5])
        super().__init__(f"{message}: {detail}" if detail else message)


@dataclass(frozen=True)
class PolicySchema:
    """A Cedar schema (human-readable syntax)."""

    text: str

    @cached_property
    def handle(self) -> cedarpy.Schema:
        """Parsed schema.

        Raises:
            PolicyValidationError: The schema does not parse.
        """
        try:
            return cedarpy.Schema.from_str(self.text)
        except ValueError as exc:
            raise PolicyValidationError("schema does not parse", [str(exc)]) from exc


@dataclass(frozen=True)
class PolicySet:
    """Cedar policy text, identified by its SHA-256 ``digest``."""

    text: str

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the text."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @cached_property
    def policies(self) -> dict[str, dict[str, Any]]:
        """Policies by ``@id``, each the Cedar JSON (EST) form plus ``cedar_id``.

        Raises:
            PolicyValidationError: The text does not parse, a policy has no
                ``@id``, or two policies share one.
        """
        if not self.text.strip():
            raise PolicyValidationError("empty policy set")
        try:
            est = json.loads(cedarpy.policies_to_json_str(self.text))
        except ValueError as exc:
            raise PolicyValidationError("policy set does not parse", [str(exc)]) from exc
        if est.get("templates"):
            raise PolicyValidationError("templates are not supported", sorted(est["templates"]))
        out: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        for cedar_id, body in est.get("staticPolicies", {}).items():
            pid = body.get("annotations", {}).get("id")
            if not pid:
                problems.append(f"[{cedar_id}] policy has no @id annotation")
                continue
            if pid in out:
                problems.append(f"[{pid}] @id used twice")
                continue
            out[pid] = {**body, "cedar_id": cedar_id}
        if problems:
            raise PolicyValidationError("policy ids invalid", problems)
        if not out:
            raise PolicyValidationError("policy set contains no policy")
        return out

    def ids_by_effect(self, effect: str) -> list[str]:
        """``@id`` of every policy with ``effect`` (``permit``/``forbid``)."""
        return [pid for pid, body in self.policies.items() if body["effect"] == effect]

    def ids_annotated(self, name: str, value: str) -> frozenset[str]:
        """``@id`` of every policy carrying the annotation ``@name("value")`` (e.g. ``@step_up("attest")``)."""
        return frozenset(pid for pid, body in self.policies.items()
                         if body.get("annotations", {}).get(name) == value)

    def subset_json(self, effect: str) -> str:
        """Cedar JSON policy set of only the ``effect`` policies."""
        static = {
            body["cedar_id"]: {k: v for k, v in body.items() if k != "cedar_id"}
            for body in self.policies.values()
            if body["effect"] == effect
        }
        return json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []})


def validate(policy_set: PolicySet, schema: PolicySchema | None = None) -> None:
    """Check a policy set against the schema (strict Cedar validation).

    Raises:
        PolicyValidationError: The set does not parse, lacks or repeats an
            ``@id``, or fails schema validation (unknown entity type,
            action or attribute, type error...).
    """
    schema = schema or default_schema()
    ids = {body["cedar_id"]: pid for pid, body in policy_set.policies.items()}
    result = cedarpy.validate_policies(policy_set.text, schema.handle)
    if not result.validation_passed:
        errors = [f"[{ids.get(e.policy_id, e.policy_id)}] {e.error}" for e in result.errors]
        raise PolicyValidationError("policy set does not validate against the schema", errors)


@dataclass(frozen=True)
class PolicyDiff:
    """Differences between two policy sets, by ``@id``."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """True when both sets hold the same policies."""
        return not (self.added or self.removed or self.changed)

    def render(self) -> str:
        """Text for the CLI."""
        if self.empty:
            return "no policy changes"
        lines = [f"+ {p}" for p in self.added]
        lines += [f"- {p}" for p in self.removed]
        lines += [f"~ {p}" for p in self.changed]
        return "\n".join(lines)


def diff_policy_sets(old: PolicySet, new: PolicySet) -> PolicyDiff:
    """Compare two sets policy by policy (semantics, not formatting).

    Raises:
        PolicyValidationError: Either set does not parse or has bad ids.
    """

    def body(p: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in p.items() if k != "cedar_id"}, sort_keys=True)

    a, b = old.policies, new.policies
    return PolicyDiff(
        added=tuple(sorted(set(b) - set(a))),
        removed=tuple(sorted(set(a) - set(b))),
        changed=tuple(sorted(p for p in set(a) & set(b) if body(a[p]) != body(b[p]))),
    )


def _read(name: str) -> str:
    return resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def default_schema() -> PolicySchema:
    """The shipped iotguard schema."""
    return PolicySchema(_read("iotguard.cedarschema"))


def default_policy_set() -> PolicySet:
    """The shipped default policies (deny by default, least privilege)."""
    return PolicySet(_read("default.cedar"))


def default_roles() -> dict[str, tuple[str, ...]]:
    """The shipped operator role hierarchy: role -> roles it is a member of."""
    raw = json.loads(_read("roles.json"))
    return {str(k): tuple(str(p) for p in v) for k, v in raw.items()}
