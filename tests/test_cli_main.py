"""The ``iotguard`` command line imports only the module of the command it runs."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from iotguard.cli.main import _COMMAND_MODULES, _COMMANDS, _command_of, build_parser


def test_the_command_map_names_the_module_that_registers_each_command() -> None:
    registered: dict[str, str] = {}
    for module in _COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        registered |= dict.fromkeys(sub.choices, module)
    assert registered == _COMMANDS


def test_the_command_is_the_first_positional_argument() -> None:
    assert _command_of(["-v", "--log-format", "json", "tokens", "create"]) == "tokens"
    assert _command_of(["--log-format=json", "agent", "--device-id", "x"]) == "agent"
    assert _command_of(["--help"]) is None and _command_of([]) is None
    assert _command_of(["-v"]) is None


def test_a_named_command_builds_only_its_own_parser_and_help_lists_them_all() -> None:
    sub = next(a for a in build_parser("reference-values")._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {c for c, m in _COMMANDS.items() if m == "iotguard.cli.attest"}
    sub = next(a for a in build_parser(None)._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(_COMMANDS)


def test_an_agent_command_line_does_not_import_the_hub() -> None:
    probe = ("import sys; from iotguard.cli.main import build_parser; "
             "build_parser('agent').parse_args(['agent', '--device-id', 'd', '--data-dir', '/nonexistent']); "
             "print('iotguard.hub.compose' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
