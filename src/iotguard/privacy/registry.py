"""The registry of known data contracts, looked up by name.

A device model string comes from an operator (``iotguard devices add
--model``) and reaches the hub's receipt and retention paths, so it is never
treated as a file path: it is validated as a contract name and resolved
among the contracts the registry knows, the ones shipped as package data
plus any an operator registers explicitly (read by the caller from its own
configuration, handed over by name).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

from iotguard.errors import ConfigError
from iotguard.privacy.contract import MAX_CONTRACT_BYTES, DataContract, parse_contract

__all__ = [
    "CONTRACT_NAME_RE",
    "ContractRegistry",
    "available_models",
    "load_contract",
    "validate_contract_name",
]

#: What a contract name may look like: no path separators, no leading dot,
#: no NUL, at most 64 characters. Matched in full (``fullmatch``).
CONTRACT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def validate_contract_name(name: object) -> str:
    """Return ``name`` if it is a well-formed contract name.

    Raises:
        ConfigError: not a string, or not of the form ``CONTRACT_NAME_RE``
            (``../../etc/passwd``, an absolute path, ``..`` and NUL all fail).
    """
    if not isinstance(name, str) or CONTRACT_NAME_RE.fullmatch(name) is None:
        raise ConfigError(f"{name!r} is not a contract name (lowercase letters, digits, '.', '_', '-')")
    return name


def _shipped() -> dict[str, bytes]:
    root = resources.files("iotguard.privacy").joinpath("contracts")
    return {p.name[:-5]: p.read_bytes() for p in root.iterdir() if p.name.endswith(".toml")}


class ContractRegistry:
    """Data contracts by name: the shipped ones plus those an operator registers.

    Args:
        extra: Operator contracts as name -> TOML bytes. A name must be valid
            and must not shadow a shipped contract.

    Raises:
        ConfigError: an invalid or shadowing name in ``extra``.
    """

    def __init__(self, extra: Mapping[str, bytes] | None = None) -> None:
        sources = _shipped()
        for name, data in (extra or {}).items():
            validate_contract_name(name)
            if name in sources:
                raise ConfigError(f"contract {name!r} is shipped with iotguard; choose another name")
            sources[name] = bytes(data)
        self._sources: Mapping[str, bytes] = MappingProxyType(sources)
        self._parsed: dict[str, DataContract] = {}

    def names(self) -> list[str]:
        """Every contract name this registry resolves, sorted."""
        return sorted(self._sources)

    def load(self, name: str) -> DataContract:
        """The contract called ``name``; it must declare ``model = name``.

        Raises:
            ConfigError: an invalid name, an unknown one, or an invalid contract.
        """
        validate_contract_name(name)
        cached = self._parsed.get(name)
        if cached is not None:
            return cached
        data = self._sources.get(name)
        if data is None:
            raise ConfigError(f"no data contract for model {name!r} (known: {', '.join(self.names())})")
        source = f"{name}.toml"
        if len(data) > MAX_CONTRACT_BYTES:
            raise ConfigError(f"{source}: contract exceeds {MAX_CONTRACT_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: contract is not UTF-8") from None
        contract = parse_contract(text, source=source)
        if contract.model != name:
            raise ConfigError(f"{source}: declares model {contract.model!r}")
        self._parsed[name] = contract
        return contract


@functools.cache
def _shipped_registry() -> ContractRegistry:
    # Built on first use, not at import: package data is read only when asked for.
    return ContractRegistry()


def available_models() -> list[str]:
    """Device models with a contract shipped inside the package."""
    return _shipped_registry().names()


def load_contract(model: str) -> DataContract:
    """The shipped data contract for device model ``model`` (a name, never a path).

    Raises:
        ConfigError: the name is invalid or no shipped contract has it.
    """
    return _shipped_registry().load(model)
