"""Data contracts: shipped contracts load; broken contracts fail with a clear path; hub check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import iotguard.privacy
from iotguard.errors import ConfigError, PolicyDenied
from iotguard.privacy import (
    ContractRegistry,
    available_models,
    check_reading,
    load_contract,
    parse_contract,
    render_notice,
)

_SHIPPED_DIR = Path(iotguard.privacy.__file__).parent / "contracts"

BASE = """
[contract]
format = 1
model = "t-1"
version = 2
title = "test device"
controller = "c"
contact = "x@example.org"
withdraw = "ask"

[budget]
epsilon = 4.0
period = "1d"

[fields.temperature]
type = "float"
description = "temperature"
min = 0.0
max = 40.0

[fields.mood]
type = "category"
description = "mood"
categories = ["a", "b", "c"]

[purposes.research]
description = "research"
legal_basis = "consent"
retention = "30d"
min_interval = "1h"
[purposes.research.fields.temperature]
transforms = [{ kind = "ldp", epsilon = 1.0 }]
"""


def test_every_shipped_model_loads_and_renders() -> None:
    models = available_models()
    assert {"thermo-1", "motion-1", "meter-1", "wear-1", "tracker-1"} <= set(models)
    for m in models:
        c = load_contract(m)
        assert c.model == m and c.version >= 1
        text = render_notice(c)
        assert "withdraw" in text and "Kept for" in text


def test_allowed_fields_only_for_consented_purposes() -> None:
    c = load_contract("wear-1")
    assert c.allowed_fields([]) == frozenset()
    assert c.allowed_fields(["safety"]) == {"heart_rate", "location"}
    assert c.allowed_fields(["fitness", "no-such-purpose"]) == {"heart_rate", "wearer"}


def test_digest_changes_with_content() -> None:
    a = parse_contract(BASE)
    b = parse_contract(BASE.replace('retention = "30d"', 'retention = "31d"'))
    assert a.digest() != b.digest()
    assert a.digest() == parse_contract(BASE).digest()


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("format = 1", "format = 9", "contract.format"),
        ("version = 2", "version = 0", "contract.version"),
        ('legal_basis = "consent"', 'legal_basis = "because"', "purposes.research.legal_basis"),
        ('retention = "30d"', 'retention = "forever"', "purposes.research.retention"),
        ('kind = "ldp", epsilon = 1.0', 'kind = "ldp", epsilon = 0.0', "epsilon"),
        ('kind = "ldp", epsilon = 1.0', 'kind = "ldp", epsilon = 1.0, mechanism = "oue"', "mechanism"),
        ('kind = "ldp", epsilon = 1.0', 'kind = "geohash", precision = 5', "does not apply"),
        ('kind = "ldp", epsilon = 1.0', 'kind = "shred"', "unknown transform kind"),
        ('kind = "ldp", epsilon = 1.0', 'kind = "ldp", epsilon = 9.0', "more than the whole budget"),
        ("[purposes.research.fields.temperature]", "[purposes.research.fields.pressure]", "not declared"),
        ("min = 0.0\nmax = 40.0", "min = 0.0", "min and max"),
        ('categories = ["a", "b", "c"]', 'categories = ["a"]', "categories"),
        ('contact = "x@example.org"', 'contact = "x"\ncolour = "red"', "unknown key"),
        ('description = "research"', 'description = "research"\nfields = 3\n[x]', "TOML"),
    ],
)
def test_contract_validation_errors_name_the_problem(old: str, new: str, where: str) -> None:
    assert old in BASE
    with pytest.raises(ConfigError, match=where):
        parse_contract(BASE.replace(old, new, 1))


def test_ldp_needs_bounds_and_identifiers_need_pseudonyms() -> None:
    unbounded = BASE.replace("min = 0.0\nmax = 40.0\n", "")
    with pytest.raises(ConfigError, match="needs min and max"):
        parse_contract(unbounded)
    ident = (
        BASE
        + '\n[fields.owner]\ntype = "identifier"\ndescription = "who"\n[purposes.research.fields.owner]\n'
    )
    with pytest.raises(ConfigError, match="pseudonymised"):
        parse_contract(ident)


def test_ldp_must_be_the_last_transform() -> None:
    text = BASE.replace(
        '[{ kind = "ldp", epsilon = 1.0 }]',
        '[{ kind = "ldp", epsilon = 1.0 }, { kind = "round", decimals = 1 }]',
    )
    with pytest.raises(ConfigError, match="last transform"):
        parse_contract(text)


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no data contract"):
        load_contract("toaster-9")


def test_hub_rejects_undeclared_fields_and_purposes() -> None:
    c = load_contract("thermo-1")
    check_reading(c, "heating_control", {"temperature": 21.5})
    with pytest.raises(PolicyDenied, match="humidity"):
        check_reading(c, "heating_control", {"temperature": 21.5, "humidity": 40.0})
    with pytest.raises(PolicyDenied, match="not declared"):
        check_reading(c, "marketing", {"temperature": 21.5})
    with pytest.raises(PolicyDenied, match="no purpose"):
        check_reading(c, None, {"temperature": 21.5})
    with pytest.raises(PolicyDenied, match="float"):
        check_reading(c, "heating_control", {"temperature": "hot"})


def _valid_contract_file(tmp_path: Path) -> Path:
    path = tmp_path / "thermo-1.toml"
    path.write_text((_SHIPPED_DIR / "thermo-1.toml").read_text())
    return path


@pytest.mark.parametrize("kind", ["relative", "absolute", "dotdot", "nul", "passwd", "newline", "upper", "slash"])
def test_contract_name_path_traversal_refused(tmp_path: Path, kind: str) -> None:
    """A model string is a name in the registry, never a path (issue 10).

    The file named by the path is a valid contract, so a loader that read
    paths would succeed instead of refusing.
    """
    target = _valid_contract_file(tmp_path)
    name = {
        "relative": os.path.relpath(target, Path.cwd()),
        "absolute": str(target),
        "dotdot": "..",
        "nul": "thermo-1\x00../../etc/passwd",
        "passwd": "../../etc/passwd",
        "newline": "thermo-1\n",
        "upper": "Thermo-1",
        "slash": "contracts/thermo-1",
    }[kind]
    with pytest.raises(ConfigError, match="not a contract name"):
        load_contract(name)
    with pytest.raises(ConfigError, match="not a contract name"):
        ContractRegistry().load(name)


def test_operator_contracts_resolve_by_name_only() -> None:
    text = (_SHIPPED_DIR / "thermo-1.toml").read_bytes().replace(b'model = "thermo-1"', b'model = "site.thermo-9"')
    registry = ContractRegistry({"site.thermo-9": text})
    assert registry.load("site.thermo-9").model == "site.thermo-9"
    assert "site.thermo-9" in registry.names() and "thermo-1" in registry.names()
    with pytest.raises(ConfigError, match="no data contract"):
        load_contract("site.thermo-9")  # the shipped registry does not see it
    with pytest.raises(ConfigError, match="not a contract name"):
        ContractRegistry({"../x": text})
    with pytest.raises(ConfigError, match="shipped"):
        ContractRegistry({"thermo-1": text})
    mislabelled = ContractRegistry({"other-1": text})
    with pytest.raises(ConfigError, match="declares model"):
        mislabelled.load("other-1")
