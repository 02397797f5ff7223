"""New destination countries (issue 13, ADR 0717): a device reaching a country it never reached.

The country of an address comes from a MaxMind-format country database
(``.mmdb``: MaxMind GeoLite2-Country, DB-IP IP-to-Country Lite, or any
database whose records carry ``country.iso_code``), read with the
``maxminddb`` library. The operator provides the file; iotguard ships none
(the databases' licences and their monthly updates belong to the operator).

:class:`NewCountryRule` keeps, per device, the countries its flows reached
while its baseline was learned (the same flows the new-port baseline
learns: the learning window, then a device's first 20 flows after it,
ADR 0709) and flags a flow to a country outside that set. Addresses without
a country (private, reserved, or absent from the database) are never new.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Collection, Mapping
from typing import Any

import maxminddb
import numpy as np
import numpy.typing as npt

from iotguard.detection.alert import Alert, Scalar, Severity
from iotguard.detection.features import FeatureMatrix
from iotguard.detection.flows import FlowBatch
from iotguard.detection.rules import BoolArray, _Baseline
from iotguard.errors import ConfigError

__all__ = ["MAX_COUNTRY_DATABASE_BYTES", "CountryDatabase", "NewCountryRule"]

#: Largest country database accepted (GeoLite2-Country is about 10 MB, DB-IP's lite country database about 8).
MAX_COUNTRY_DATABASE_BYTES = 256 * 1024 * 1024
_CACHE = 65536


class CountryDatabase:
    """A country database, read into memory once.

    Args:
        path: The ``.mmdb`` file.

    Raises:
        ConfigError: ``geo_database_invalid`` if the file is missing, too large or not a MaxMind database.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        try:
            size = os.stat(self.path).st_size
            if size > MAX_COUNTRY_DATABASE_BYTES:
                raise ConfigError(f"country database {self.path} larger than {MAX_COUNTRY_DATABASE_BYTES} bytes",
                                  code="geo_database_invalid")
            self._reader = maxminddb.open_database(self.path, mode=maxminddb.MODE_MEMORY)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ConfigError(f"country database {self.path} not readable as a MaxMind database ({exc})",
                              code="geo_database_invalid") from None
        meta = self._reader.metadata()
        self.database_type = str(meta.database_type)
        self.build_epoch = int(meta.build_epoch)
        self.country = functools.lru_cache(maxsize=_CACHE)(self._country)

    def _country(self, address: str) -> str:
        """The ISO 3166 code of ``address``'s country; ``""`` for none (private, reserved, unknown)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return ""
        if not ip.is_global:
            return ""
        try:
            record: Any = self._reader.get(ip)
        except (ValueError, maxminddb.InvalidDatabaseError):
            return ""
        if not isinstance(record, dict):
            return ""
        for key in ("country", "registered_country"):
            entry = record.get(key)
            code = entry.get("iso_code") if isinstance(entry, dict) else None
            if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
                return code.upper()
        return ""

    def countries(self, addresses: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
        """The country code of each address (``""`` for none), one look-up per distinct address."""
        unique, inverse = np.unique(addresses, return_inverse=True)
        out: npt.NDArray[np.str_] = np.array([self.country(a) for a in unique.tolist()], dtype="<U2")[inverse]
        return out


class NewCountryRule(_Baseline):
    """A device reaching a destination country absent from its learned baseline.

    Args:
        database: Where countries come from.
        devices: Address -> device id of fleet devices.
        realert_s: Quiet time per host after an alert.
        local_hosts: Site hosts besides the devices (they go on learning after the window).
    """

    name = "new_country"
    severity = Severity.LOW

    def __init__(self, database: CountryDatabase, devices: Mapping[str, str] | None = None,
                 realert_s: float = 300.0, local_hosts: Collection[str] = (), *, compiled: bool = True) -> None:
        super().__init__(devices, realert_s, local_hosts, compiled=compiled)
        self.database = database

    def _keys(self, batch: FlowBatch) -> npt.NDArray[Any]:
        return self.database.countries(batch.resp_h)

    def hits(self, batch: FlowBatch, features: FeatureMatrix) -> BoolArray:
        keys = self._keys(batch)
        hit = self._unknown(batch, keys=keys)
        hit &= keys != ""
        return hit

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        hit = self.hits(batch, features)
        return self._alerts(batch, hit, hit.astype(np.float64))

    def _evidence(self, batch: FlowBatch, rows: BoolArray) -> dict[str, Scalar]:
        return {"countries": ",".join(sorted(set(self._keys(batch)[rows].tolist())))[:120]}
