"""Known-bad address feeds: one IPv4/IPv6 address or CIDR network per line.

``#`` starts a comment; blank lines are ignored; anything else that is not
an address or network is rejected with the line number (a feed that half
loads would silently stop matching). Lookups test every prefix length the
feed uses against a set, so a batch of addresses costs a few set probes each.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from iotguard.errors import MalformedError

__all__ = ["MAX_FEED_BYTES", "MAX_FEED_ENTRIES", "ThreatFeed", "parse_feed"]

MAX_FEED_BYTES = 64 * 1024 * 1024
MAX_FEED_ENTRIES = 2_000_000
_MAX_LINE = 128

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ThreatFeed:
    """A parsed feed: networks by (IP version, prefix length)."""

    networks: frozenset[Network]
    name: str = "feed"

    def __post_init__(self) -> None:
        by_prefix: dict[tuple[int, int], set[int]] = {}
        for net in self.networks:
            by_prefix.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
        object.__setattr__(self, "_by_prefix", by_prefix)

    def __len__(self) -> int:
        return len(self.networks)

    def match(self, address: str) -> Network | None:
        """The feed network holding ``address`` (``None`` if none, or not an address)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        value = int(ip)
        bits = ip.max_prefixlen
        by_prefix: dict[tuple[int, int], set[int]] = object.__getattribute__(self, "_by_prefix")
        for (version, prefix), nets in by_prefix.items():
            if version != ip.version:
                continue
            masked = value >> (bits - prefix) << (bits - prefix) if prefix else 0
            if masked in nets:
                return ipaddress.ip_network((masked, prefix))
        return None


def parse_feed(data: bytes, *, name: str = "feed") -> ThreatFeed:
    """Parse a feed file's bytes.

    Raises:
        MalformedError: ``feed_too_large``, ``feed_not_utf8``, ``feed_line_too_long``,
            ``feed_bad_entry`` (with the line number) or ``feed_too_many_entries``.
    """
    if len(data) > MAX_FEED_BYTES:
        raise MalformedError(f"feed larger than {MAX_FEED_BYTES} bytes", code="feed_too_large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedError("feed is not UTF-8", code="feed_not_utf8") from None
    networks: set[Network] = set()
    for line_no, raw in enumerate(text.splitlines(), start=1):
        if len(raw) > _MAX_LINE:
            raise MalformedError(f"feed line {line_no} too long", code="feed_line_too_long")
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            networks.add(ipaddress.ip_network(entry, strict=True))
        except ValueError:
            raise MalformedError(f"feed line {line_no}: not an address or network", code="feed_bad_entry") from None
        if len(networks) > MAX_FEED_ENTRIES:
            raise MalformedError(f"more than {MAX_FEED_ENTRIES} feed entries", code="feed_too_many_entries")
    return ThreatFeed(frozenset(networks), name=name)
