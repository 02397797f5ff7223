"""The hub's threat feed: known-bad addresses from a file the operator keeps (issue 13, ADR 0716).

``<data_dir>/threat_feed`` holds one IPv4/IPv6 address or CIDR network per
line (``#`` comments; :func:`~iotguard.detection.parse_feed`), e.g. written
by a cron job from a blocklist the operator trusts. Every hub process reads
the file itself and reads it again when it changes (modification time and
size), so they all match against the same feed; a change does not restart
the flow monitor's learning. A file that does not parse is refused whole,
with its reason code logged and shown by ``iotguard detect status``, and the
last good feed stays in force: a bad edit must neither half-load a feed nor
silently drop one. Removing the file removes the ``known_bad_address`` rule.
"""

from __future__ import annotations

import logging
from pathlib import Path

from iotguard.detection import ThreatFeed, parse_feed
from iotguard.detection.feed import MAX_FEED_BYTES
from iotguard.errors import MalformedError

__all__ = ["THREAT_FEED_FILE", "FeedFile"]

log = logging.getLogger(__name__)

#: The threat feed's file name in the hub's data directory.
THREAT_FEED_FILE = "threat_feed"


class FeedFile:
    """The threat feed file of one hub data directory, as last read.

    Args:
        path: The feed file (it need not exist).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int] | None = None
        self._feed: ThreatFeed | None = None
        #: Reason code of the last refused version of the file (``None``: the file as it is now is in force).
        self.error: str | None = None

    def current(self) -> ThreatFeed | None:
        """The feed in force: the file's, read again if it changed; ``None`` without a file (no rule)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._key is not None or self._feed is not None:
                log.info("threat feed %s removed: no known-bad address rule", self.path)
            self._key, self._feed, self.error = None, None, None
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key == self._key:
            return self._feed
        self._key = key
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_FEED_BYTES + 1)
            feed = parse_feed(data, name=THREAT_FEED_FILE)
        except (MalformedError, OSError) as exc:
            self.error = exc.code if isinstance(exc, MalformedError) else "feed_unreadable"
            log.error("threat feed %s refused (%s); %s", self.path, self.error,
                      f"the previous feed ({len(self._feed)} networks) stays" if self._feed is not None
                      else "no known-bad address rule")
            return self._feed
        self._feed, self.error = feed, None
        log.info("threat feed %s loaded: %d networks", self.path, len(feed))
        return feed

    def status(self) -> dict[str, object]:
        """For ``iotguard detect status``: the file, the networks in force and the last refusal's reason."""
        feed = self.current()
        return {"file": str(self.path), "networks": len(feed) if feed is not None else 0,
                "present": self.path.exists(), "error": self.error}
