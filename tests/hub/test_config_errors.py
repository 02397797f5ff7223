"""Configuration loading and the error-code tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotguard.config import load_config
from iotguard.errors import PUBLIC_MESSAGES, ConfigError, IotGuardError


def test_defaults_are_secure(tmp_path: Path) -> None:
    cfg = load_config(env={"IOTGUARD_CONFIG": str(tmp_path / "none.toml")})
    assert cfg.hub.embedded_broker_bind.startswith("127.")
    assert cfg.hub.api_bind.startswith("127.")


def test_file_then_environment(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[hub]\nbatch_max_messages = 10\nallowed_suites = ["chacha20-poly1305"]\n')
    cfg = load_config(f, env={"IOTGUARD_HUB__BATCH_MAX_MESSAGES": "20"})
    assert cfg.hub.batch_max_messages == 20
    assert cfg.hub.allowed_suites == ["chacha20-poly1305"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[hub]\nbatch_max_messages = 0\n", "out of range"),
        ("[hub]\ndetection_learn_s = -1\n", "out of range"),
        ("[hub]\ndetection_learn_flows = 300000\n", "out of range"),
        ("[hub]\nbatch_max_messages = 'many'\n", "expected an integer"),
        ("[hub]\nno_such_thing = 1\n", "unknown setting hub.no_such_thing"),
        ("[hubb]\n", "unknown config section"),
        ("[hub]\nallowed_suites = ['rot13']\n", "unknown cipher suite"),
        ("[hub]\ndatabase_url = 'mysql://x'\n", "only sqlite"),
        ("[hub\n", "config file"),
    ],
)
def test_invalid_config_has_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f, env={})


def _codes(cls: type[IotGuardError]) -> set[str]:
    out = {cls.code}
    for sub in cls.__subclasses__():
        out |= _codes(sub)
    return out


def test_every_error_code_has_a_public_message_and_http_status() -> None:
    from iotguard.hub.api import HTTP_STATUS

    codes = _codes(IotGuardError)
    assert codes <= set(PUBLIC_MESSAGES), codes - set(PUBLIC_MESSAGES)
    assert codes <= set(HTTP_STATUS), codes - set(HTTP_STATUS)
