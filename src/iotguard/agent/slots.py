"""A/B firmware slots in the agent's data directory, with a trial boot.

Layout under ``<data_dir>/firmware/``: ``slot-a.img``, ``slot-b.img`` and
``slots.json`` (which slot is active, what each slot holds, and a pending
trial). Every state change is one atomic file replace, so a power loss at
any instant leaves either the old or the new state, never a mix:

1. :meth:`FirmwareSlots.write_inactive` first forgets the inactive slot in
   the state, then writes the image, reads it back and checks hash and
   length, and only then records it.
2. :meth:`FirmwareSlots.switch` arms a trial of the inactive slot with a
   boot budget; the active slot stays the committed one.
3. :meth:`FirmwareSlots.boot` spends one trial boot, or, when the budget is
   spent, drops the trial and boots the committed slot (automatic rollback).
4. :meth:`FirmwareSlots.commit` makes the trial slot the active one.

A slot whose bytes no longer match what the state recorded is never booted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotguard.errors import IntegrityError, MalformedError, SecureBootError
from iotguard.fileio import atomic_write

__all__ = ["BootedSlot", "FirmwareSlots", "SlotImage"]

_SLOTS = ("a", "b")
_MAX_STATE = 4096


@dataclass(frozen=True)
class SlotImage:
    """What one slot holds: release version and the image's hash and length."""

    version: int
    sha256: str
    length: int


@dataclass(frozen=True)
class BootedSlot:
    """The slot a boot chose and whether it is an uncommitted trial."""

    slot: str
    image: SlotImage
    trial: bool


def _other(slot: str) -> str:
    return "b" if slot == "a" else "a"


class FirmwareSlots:
    """Two firmware slots and their durable state in ``data_dir/firmware``."""

    def __init__(self, data_dir: str | Path, *, trial_boots: int = 3) -> None:
        if trial_boots < 1:
            raise MalformedError("trial_boots must be at least 1")
        self._dir = Path(data_dir) / "firmware"
        self._trial_boots = trial_boots

    # -- state ---------------------------------------------------------------
    def _state_path(self) -> Path:
        return self._dir / "slots.json"

    def _slot_path(self, slot: str) -> Path:
        return self._dir / f"slot-{slot}.img"

    def _load(self) -> dict[str, Any]:
        raw = self._state_path().read_bytes()
        if len(raw) > _MAX_STATE:
            raise IntegrityError("slot state too large")
        state = json.loads(raw)
        if not isinstance(state, dict) or state.get("active") not in _SLOTS:
            raise IntegrityError("slot state unreadable")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write(self._state_path(), json.dumps(state, sort_keys=True).encode())

    @staticmethod
    def _image(state: dict[str, Any], slot: str) -> SlotImage | None:
        entry = state["slots"].get(slot)
        return None if entry is None else SlotImage(entry["version"], entry["sha256"], entry["length"])

    def provisioned(self) -> bool:
        """Whether factory firmware has been installed."""
        return self._state_path().exists()

    def provision(self, image: bytes, version: int) -> None:
        """Install factory firmware into slot ``a`` and commit it.

        Raises:
            MalformedError: firmware was provisioned already.
        """
        if self.provisioned():
            raise MalformedError("firmware slots are provisioned already")
        self._dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._slot_path("a"), image)
        entry = {"version": version, "sha256": hashlib.sha256(image).hexdigest(), "length": len(image)}
        self._save({"active": "a", "slots": {"a": entry, "b": None}, "trial": None})

    def active(self) -> SlotImage:
        """The committed image."""
        state = self._load()
        image = self._image(state, state["active"])
        assert image is not None
        return image

    def trial(self) -> tuple[str, int] | None:
        """The armed trial (slot, boots left), if any."""
        trial = self._load()["trial"]
        return None if trial is None else (trial["slot"], trial["boots_left"])

    def read(self, slot: str) -> bytes:
        """The bytes in ``slot``."""
        return self._slot_path(slot).read_bytes()

    # -- install steps -----------------------------------------------------
    def write_inactive(self, image: bytes, version: int, sha256: str, length: int) -> str:
        """Write ``image`` into the inactive slot and verify it; returns the slot.

        Raises:
            IntegrityError: the written bytes do not have ``sha256``/``length``.
        """
        state = self._load()
        if state["trial"] is not None:
            raise IntegrityError("a trial is pending; commit or roll back first")
        slot = _other(state["active"])
        state["slots"][slot] = None
        self._save(state)
        atomic_write(self._slot_path(slot), image)
        written = self._slot_path(slot).read_bytes()
        if len(written) != length or hashlib.sha256(written).hexdigest() != sha256:
            raise IntegrityError("slot image does not match the release's hash and length")
        state["slots"][slot] = {"version": version, "sha256": sha256, "length": length}
        self._save(state)
        return slot

    def switch(self) -> str:
        """Arm a trial boot of the inactive slot; returns it.

        Raises:
            IntegrityError: the inactive slot holds no verified image.
        """
        state = self._load()
        slot = _other(state["active"])
        if self._image(state, slot) is None:
            raise IntegrityError("inactive slot holds no verified image")
        state["trial"] = {"slot": slot, "boots_left": self._trial_boots}
        self._save(state)
        return slot

    def boot(self) -> BootedSlot:
        """Choose the slot to boot (what a bootloader does on every reset).

        A pending trial consumes one boot; a spent or corrupt trial is dropped
        and the committed slot boots.

        Raises:
            SecureBootError: the committed slot's image is corrupt too.
        """
        state = self._load()
        trial = state["trial"]
        if trial is not None:
            image = self._image(state, trial["slot"])
            if trial["boots_left"] > 0 and image is not None and self._intact(trial["slot"], image):
                trial["boots_left"] -= 1
                self._save(state)
                return BootedSlot(trial["slot"], image, trial=True)
            state["trial"] = None
            self._save(state)
        active = state["active"]
        image = self._image(state, active)
        if image is None or not self._intact(active, image):
            raise SecureBootError("committed firmware slot is corrupt")
        return BootedSlot(active, image, trial=False)

    def commit(self) -> SlotImage:
        """Make the trial slot the committed one.

        Raises:
            IntegrityError: no trial is pending.
        """
        state = self._load()
        trial = state["trial"]
        if trial is None:
            raise IntegrityError("no trial to commit")
        state["active"] = trial["slot"]
        state["trial"] = None
        self._save(state)
        image = self._image(state, trial["slot"])
        assert image is not None
        return image

    def rollback(self) -> SlotImage:
        """Drop a pending trial; the committed slot stays active."""
        state = self._load()
        state["trial"] = None
        self._save(state)
        image = self._image(state, state["active"])
        assert image is not None
        return image

    def _intact(self, slot: str, image: SlotImage) -> bool:
        try:
            data = self._slot_path(slot).read_bytes()
        except FileNotFoundError:
            return False
        return len(data) == image.length and hashlib.sha256(data).hexdigest() == image.sha256
