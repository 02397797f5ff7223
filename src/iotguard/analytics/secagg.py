"""Secure aggregation (Bonawitz et al., CCS 2017): the hub learns only the sum.

Vectors are integers modulo ``2^32`` (callers quantise). Each device ``u``:

* draws two 16-byte secrets: the mask-key secret ``m_u``, from which its
  X25519 mask private key is derived (HKDF-SHA256), and the self-mask seed
  ``b_u`` (ADR 0416: 128 bits, X25519's security level);
* Shamir-shares ``m_u`` and ``b_u`` (threshold ``t``) among the round's
  devices (:func:`split` / :func:`combine` over the prime field
  ``2^128 + 51``, 17-byte shares);
* sends ``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)``
  where ``s_uv`` is the 16-byte HKDF-SHA256 output of the X25519 agreement of
  ``u`` and ``v`` and PRG is the AES-128-CTR keystream (AES-NI where the CPU
  has it).

The aggregator adds the masked vectors of the devices that sent one. For a
device ``v`` that dropped out it collects ``t`` shares of ``v``'s mask-key
secret from survivors (the key derived from it must be the one ``v``
advertised) and recomputes ``v``'s pairwise masks with every survivor;
for every survivor it collects ``t`` shares of ``b_u`` and removes the self
mask. A device answers for each peer with one kind of share only (key of a
dropped peer, seed of a surviving one), so the aggregator never holds both
secrets of one device. Shares are checked strictly: wrong owner, holder,
index or range, duplicates and shares inconsistent with the others (more
than ``t`` given and not on one polynomial) are rejected with a reason.

**SecAgg+** (Bell et al., CCS 2020): with ``neighbours`` (a symmetric graph,
:func:`harary_neighbours`: the Harary graph ``H(k, n)`` on labels permuted by
a public round seed) a device masks and shares only with its ``k``
neighbours and the threshold ``t`` counts among them, so each device's work
and traffic grow with ``k ~ log n`` rather than ``n``. Without a graph every
device is every other's neighbour (the original protocol).

**Reconstruction** (:mod:`iotguard.analytics.secagg_shamir`) is batched: a
share's x-coordinate is its holder's position in the owner's holder list
plus one (ADR 0417), so the shares of every secret held by one set of
positions are combined with coefficients computed once for that set (with
nobody dropping, one set serves every secret), and the points beyond ``t``
are checked for all secrets at once with a random linear combination tested
against the parity checks of the Reed-Solomon code (a wrong share is missed
with probability about ``c/p``); when the batch fails, each secret is checked
to name the inconsistent one.

Shares between devices travel through the hub sealed in a **share box**
(:meth:`Device.seal_shares`): ChaCha20-Poly1305 under a key from an X25519
agreement of the devices' *encryption* keys (a second key pair, never
secret-shared, so reconstructing a dropped device's mask key opens none of
the boxes it received), bound to the round, the sender and the recipient.
This module does no I/O; the messages travel over the authenticated device
channel (:mod:`iotguard.analytics.secagg_round`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from iotguard.analytics.secagg_degree import degree_failure_log2, secagg_plus_degree
from iotguard.analytics.secagg_shamir import (
    MAX_X,
    PRIME,
    ROUND_STATE_REASONS,
    SECRET_BYTES,
    AggregationError,
    combine,
    reconstruct_all,
    split,
)
from iotguard.errors import ConfigError

__all__ = ["BOX_BYTES", "MAX_X", "PRIME", "ROUND_STATE_REASONS", "SECRET_BYTES", "SHARE_BYTES", "AggregationError",
           "Aggregator", "Device", "Share", "combine", "degree_failure_log2", "harary_neighbours", "prg",
           "reconstruct_all", "secagg_plus_degree", "split"]

MAX_DIMS = 1 << 24
MAX_DEVICES = 1 << 16
#: Bytes of one Shamir share on the wire (a field element below 2^129, big-endian).
SHARE_BYTES = 17
#: Bytes of a share box: the mask-key share and the seed share, sealed (ChaCha20-Poly1305, 16-byte tag).
BOX_BYTES = 2 * SHARE_BYTES + 16
Vector = npt.NDArray[np.uint32]


@dataclass(frozen=True)
class Share:
    """A share of a secret of ``owner``, held by ``holder``; its x-coordinate is the holder's position in the
    owner's holder list (the owner and its neighbours, ascending index) plus one (ADR 0417)."""

    owner: int
    holder: int
    kind: str  # "key" (mask-key secret), "seed" (self-mask seed), or "pair" (a pair seed, unmasking only)
    y: int


def harary_neighbours(n: int, k: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    """SecAgg+'s graph: the Harary graph ``H(k, n)`` over a permutation of ``0..n-1`` drawn from ``seed``.

    Each device gets ``k`` neighbours (``k`` even, ``2 <= k < n``; ``k >= n - 1``: everyone).

    Raises:
        ConfigError: bad ``n`` or ``k``.
    """
    if not 2 <= n <= MAX_DEVICES or k < 2:
        raise ConfigError("a graph needs 2..65536 devices and degree >= 2")
    if k >= n - 1:
        return {u: tuple(v for v in range(n) if v != u) for u in range(n)}
    if k % 2:
        raise ConfigError("the Harary graph degree must be even")
    words = prg(HKDF(hashes.SHA256(), SECRET_BYTES, None, b"iotguard-secagg-graph").derive(seed), n)
    order = sorted(range(n), key=lambda i: (int(words[i]), i))
    pos = {d: i for i, d in enumerate(order)}
    half = k // 2
    return {u: tuple(sorted(order[(pos[u] + j) % n] for j in range(-half, half + 1) if j))
            for u in range(n)}


def prg(seed: bytes, dims: int) -> Vector:
    """``dims`` uniform words modulo ``2^32``: the AES-128-CTR keystream keyed by the 16-byte ``seed`` (counter
    block 0), little-endian, written by OpenSSL straight into the array (no intermediate bytes).

    Raises:
        ConfigError: a seed that is not 16 bytes.
    """
    if len(seed) != SECRET_BYTES:
        raise ConfigError("a mask seed is 16 bytes")
    return _keystream(seed, bytes(16), dims)


@lru_cache(maxsize=4)
def _zeros(size: int) -> bytes:
    return bytes(size)


def _keystream(key: bytes, counter: bytes, dims: int) -> Vector:
    out = np.empty(dims + 4, dtype="<u4")  # update_into wants a block's worth of spare room
    enc = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    enc.update_into(_zeros(4 * dims), memoryview(out.data).cast("B"))
    return out[:dims]


def _mask_key(secret: bytes) -> X25519PrivateKey:
    """The X25519 mask private key of a 16-byte mask-key secret (sharing the secret shares the key)."""
    return X25519PrivateKey.from_private_bytes(HKDF(hashes.SHA256(), 32, None, b"iotguard-secagg-mask-key")
                                               .derive(secret))


def _agree(sk: X25519PrivateKey, pk: bytes | X25519PublicKey, lo: int, hi: int) -> bytes:
    """The pair seed ``s_uv``: 16 bytes of HKDF-SHA256 over the X25519 agreement, bound to the pair."""
    peer = pk if isinstance(pk, X25519PublicKey) else X25519PublicKey.from_public_bytes(pk)
    shared = sk.exchange(peer)
    info = b"iotguard-secagg-pair|" + lo.to_bytes(4, "big") + hi.to_bytes(4, "big")
    return HKDF(hashes.SHA256(), SECRET_BYTES, None, info).derive(shared)


def _add_pair_mask(acc: Vector, u: int, v: int, seed: bytes) -> None:
    """Add (``u < v``) or subtract (``u > v``) the pair's mask into ``acc`` in place (wrapping mod 2^32)."""
    m = prg(seed, len(acc))
    if u < v:
        np.add(acc, m, out=acc)
    else:
        np.subtract(acc, m, out=acc)


def _box_key(sk: X25519PrivateKey, pk: bytes, round_id: bytes, sender: int, recipient: int) -> ChaCha20Poly1305:
    """The key of the one box ``sender`` seals for ``recipient`` in the round: the box carries no indices, so a
    box replayed to another recipient, or as another sender's, is opened under another key and fails."""
    try:
        shared = sk.exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError:
        raise AggregationError("public_key_malformed", "encryption key") from None
    info = b"iotguard-secagg-box|" + round_id + sender.to_bytes(4, "big") + recipient.to_bytes(4, "big")
    return ChaCha20Poly1305(HKDF(hashes.SHA256(), 32, None, info).derive(shared))


class Device:
    """One participant: its value, its keys, its shares of the others' secrets.

    Args:
        index: The device's index in the round.
        value: Its vector (integers modulo 2^32).
    """

    def __init__(self, index: int, value: Vector) -> None:
        self.index = index
        self._value = np.asarray(value, dtype=np.uint32)
        self._mask_secret = secrets.token_bytes(SECRET_BYTES)
        self._sk = _mask_key(self._mask_secret)
        self.public_key = self._sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._ck = X25519PrivateKey.generate()
        #: Key of the share boxes (never secret-shared).
        self.encryption_key = self._ck.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._seed = secrets.token_bytes(SECRET_BYTES)
        self._held: dict[tuple[int, str], int] = {}
        self._revealed: dict[int, str] = {}
        self._pair_seeds: dict[int, bytes] = {}  # s_uv of each peer masked with (kept for unmasking)

    def shares_for_peers(self, peers: int | Sequence[int], t: int) -> list[Share]:
        """Round 1: shares of this device's mask-key secret and seed, one of each per peer (``int``: devices
        ``0..n-1``)."""
        holders = list(range(peers)) if isinstance(peers, int) else sorted({*peers, self.index})
        if not 1 <= t <= len(holders):
            raise ConfigError("threshold must be 1..number of holders")
        # x-coordinate: the holder's position in this device's holder list + 1 (ADR 0417), so every owner's
        # holder set is 1..k + 1 and one set of coefficients serves every secret with nobody dropping
        n = len(holders)
        keys, seeds = split(self._mask_secret, n, t), split(self._seed, n, t)
        return [Share(self.index, h, kind, ys[i]) for i, h in enumerate(holders)
                for kind, ys in (("key", keys), ("seed", seeds))]

    def seal_shares(self, shares: Sequence[Share], encryption_keys: Mapping[int, bytes],
                    round_id: bytes) -> dict[int, bytes]:
        """Round 1 over the hub: each peer's key and seed shares in a box only that peer opens (``BOX_BYTES``:
        the two 17-byte shares, sealed; who sent it to whom is bound by the box key, not written in it)."""
        by_holder: dict[int, dict[str, int]] = {}
        for s in shares:
            by_holder.setdefault(s.holder, {})[s.kind] = s.y
        boxes = {}
        for h, ys in by_holder.items():
            if h == self.index:
                continue
            plain = ys["key"].to_bytes(SHARE_BYTES, "big") + ys["seed"].to_bytes(SHARE_BYTES, "big")
            boxes[h] = _box_key(self._ck, encryption_keys[h], round_id, self.index, h).encrypt(b"\0" * 12, plain,
                                                                                               round_id)
        return boxes

    def open_shares(self, sender: int, box: bytes, sender_encryption_key: bytes, round_id: bytes) -> None:
        """Open and keep a peer's share box addressed to this device.

        Raises:
            AggregationError: ``share_forged`` (does not open: tampered, replayed from another round, to
                another recipient or as another sender's), ``share_malformed`` (wrong size or range).
        """
        try:
            plain = _box_key(self._ck, sender_encryption_key, round_id, sender, self.index).decrypt(
                b"\0" * 12, bytes(box), round_id)
        except InvalidTag:
            raise AggregationError("share_forged", f"box from device {sender} does not open") from None
        if len(plain) != 2 * SHARE_BYTES:
            raise AggregationError("share_malformed", f"box from device {sender}")
        self.receive_share(Share(sender, self.index, "key", int.from_bytes(plain[:SHARE_BYTES], "big")))
        self.receive_share(Share(sender, self.index, "seed", int.from_bytes(plain[SHARE_BYTES:], "big")))

    def receive_share(self, share: Share) -> None:
        """Keep a peer's share addressed to this device."""
        if share.holder != self.index or share.kind not in ("key", "seed") or not 0 <= share.y < PRIME:
            raise AggregationError("share_malformed", "wrong holder, kind or range")
        self._held[(share.owner, share.kind)] = share.y

    def masked_input(self, public_keys: Mapping[int, bytes]) -> Vector:
        """Round 2: the masked vector (the only form of the value that leaves the device).

        ``public_keys``: mask keys of this device's neighbours (every device without a graph).
        """
        y = self._value + prg(self._seed, len(self._value))
        for v, pk in public_keys.items():
            if v != self.index:
                seed = _agree(self._sk, pk, min(v, self.index), max(v, self.index))
                self._pair_seeds[v] = seed
                _add_pair_mask(y, self.index, v, seed)
        return y

    def unmask_shares(self, survivors: Sequence[int], dropped: Sequence[int]) -> list[Share]:
        """Round 3: seed shares of survivors, key shares of dropped devices; never both for one device.

        For a dropped device this one masked with, also the pair seed ``s_uv`` itself (kind ``pair``): the
        hub may then remove that pair mask without an X25519 agreement. It learns nothing new: the key
        shares already let it compute every ``s_uv`` of the dropped device (ADR 0415).
        """
        if set(survivors) & set(dropped):
            raise AggregationError("unmask_request_inconsistent", "a device cannot be both survivor and dropped")
        out = []
        for owner, kind in [*((s, "seed") for s in survivors), *((d, "key") for d in dropped)]:
            if self._revealed.setdefault(owner, kind) != kind:
                raise AggregationError("unmask_request_inconsistent", f"device {owner} asked as both")
            if (owner, kind) in self._held:
                out.append(Share(owner, self.index, kind, self._held[(owner, kind)]))
            if kind == "key" and owner in self._pair_seeds:
                out.append(Share(owner, self.index, "pair", int.from_bytes(self._pair_seeds[owner], "big")))
        return out


class Aggregator:
    """The hub's side: holds public keys, masked vectors and unmasking shares, never a device's value.

    Args:
        n: Devices in the round.
        t: Shares needed to reconstruct a secret (among a device's neighbours).
        dims: Vector length.
        neighbours: The round's graph (:func:`harary_neighbours`); None: everyone.

    Raises:
        ConfigError: ``t`` not above half the (smallest) neighbourhood, or bad sizes.
    """

    def __init__(self, n: int, t: int, dims: int, neighbours: Mapping[int, Sequence[int]] | None = None) -> None:
        if not (2 <= n <= MAX_DEVICES and 1 <= dims <= MAX_DIMS):
            raise ConfigError("need 2 <= n <= 65536 and 1 <= dims <= 2^24")
        self.neighbours = {u: tuple(neighbours[u]) for u in range(n)} if neighbours is not None else None
        holders = min(len(v) + 1 for v in self.neighbours.values()) if self.neighbours else n
        if not holders // 2 < t <= holders:
            raise ConfigError("need holders/2 < t <= holders (holders: a device and its neighbours)")
        self.n, self.t, self.dims = n, t, dims
        self._peer_sets = {u: frozenset(v) for u, v in self.neighbours.items()} if self.neighbours else None
        self.public_keys: dict[int, bytes] = {}
        self.masked: dict[int, Vector] = {}

    def peers(self, u: int) -> tuple[int, ...]:
        """The devices ``u`` masks with and shares to."""
        if self.neighbours is None:
            return tuple(v for v in range(self.n) if v != u)
        return self.neighbours[u]

    def add_public_key(self, index: int, key: bytes) -> None:
        if not 0 <= index < self.n or len(key) != 32 or index in self.public_keys:
            raise AggregationError("public_key_malformed", f"device {index}")
        self.public_keys[index] = bytes(key)

    def add_masked(self, index: int, vector: Vector) -> None:
        if index not in self.public_keys or index in self.masked:
            raise AggregationError("masked_input_unexpected", f"device {index}")
        if not isinstance(vector, np.ndarray) or vector.dtype != np.uint32 or vector.shape != (self.dims,):
            raise AggregationError("masked_input_malformed", f"device {index}")
        self.masked[index] = vector.copy()

    def _is_peer(self, u: int, v: int) -> bool:
        return u != v if self._peer_sets is None else v in self._peer_sets[u]

    def x_coordinates(self, owner: int) -> dict[int, int]:
        """The x-coordinate of each holder of ``owner``'s shares: its position in ``owner``'s holder list (the
        owner and its neighbours, ascending index) plus one, ``1..k + 1`` (ADR 0417). A holder not in the list
        has none: its share is refused."""
        if self.neighbours is None:
            return {h: h + 1 for h in range(self.n)}
        return {h: i + 1 for i, h in enumerate(sorted({*self.neighbours[owner], owner}))}

    def _points(self, shares: Sequence[Share], survivors: set[int]) -> dict[tuple[int, str], list[tuple[int, int]]]:
        seen: dict[tuple[int, str], dict[int, int]] = {}
        xs: dict[int, dict[int, int]] = {}
        for s in shares:
            if 0 <= s.owner < self.n and s.owner not in xs:
                xs[s.owner] = self.x_coordinates(s.owner)
            x = xs[s.owner].get(s.holder) if 0 <= s.owner < self.n else None
            if x is None or s.holder not in survivors or s.kind not in ("key", "seed") or not 0 <= s.y < PRIME:
                raise AggregationError("share_malformed", f"share of {s.owner} from {s.holder}")
            got = seen.setdefault((s.owner, s.kind), {})
            if x in got and got[x] != s.y:
                raise AggregationError("share_duplicate", f"two shares of {s.owner} from {s.holder}")
            got[x] = s.y
        return {k: sorted(v.items()) for k, v in seen.items()}

    def _pair_seeds(self, shares: Sequence[Share], survivors: set[int], dropped: set[int]) -> dict[tuple[int, int],
                                                                                                  bytes]:
        """Pair seeds ``s_uv`` handed in by survivors ``u`` for dropped neighbours ``v``, by ``(v, u)``."""
        out: dict[tuple[int, int], bytes] = {}
        for s in shares:
            if (s.owner not in dropped or s.holder not in survivors or not self._is_peer(s.owner, s.holder)
                    or not 0 <= s.y < 1 << (8 * SECRET_BYTES)):
                raise AggregationError("share_malformed", f"pair seed of {s.owner} from {s.holder}")
            seed = s.y.to_bytes(SECRET_BYTES, "big")
            if out.setdefault((s.owner, s.holder), seed) != seed:
                raise AggregationError("share_duplicate", f"two pair seeds of {s.owner} from {s.holder}")
        return out

    def _dropped_keys(self, secrets_: Mapping[tuple[int, str], bytes]) -> dict[int, X25519PrivateKey]:
        """The mask private keys of the dropped devices, from their reconstructed mask-key secrets; each must
        give the public key the device advertised (else it dealt shares of another secret).

        Raises:
            AggregationError: ``share_inconsistent`` naming the dealer.
        """
        out = {}
        for (v, kind), secret in secrets_.items():
            if kind == "key":
                sk = _mask_key(secret)
                if sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != self.public_keys[v]:
                    raise AggregationError("share_inconsistent", f"shares of {v} do not give its mask key")
                out[v] = sk
        return out

    def _spot_check(self, pairs: Mapping[tuple[int, int], bytes], dropped_keys: Mapping[int, X25519PrivateKey],
                    keys: dict[int, X25519PublicKey]) -> None:
        """Recompute one randomly chosen pair seed of each holder from the reconstructed key (a holder that
        lies about a fraction f of its pair seeds is caught with probability f per round)."""
        by_holder: dict[int, list[int]] = {}
        for v, u in pairs:
            if v in dropped_keys:
                by_holder.setdefault(u, []).append(v)
        for u, owners in sorted(by_holder.items()):
            v = owners[secrets.randbelow(len(owners))]
            if u not in keys:
                keys[u] = X25519PublicKey.from_public_bytes(self.public_keys[u])
            if _agree(dropped_keys[v], keys[u], min(u, v), max(u, v)) != pairs[(v, u)]:
                raise AggregationError("share_inconsistent", f"pair seed of {v} from {u}")

    def unmask(self, shares: Sequence[Share]) -> Vector:
        """The exact sum of the survivors' values, from their masked vectors and the unmasking shares.

        Raises:
            AggregationError: too few survivors or shares, or a malformed/inconsistent share.
        """
        survivors = set(self.masked)
        dropped = sorted(set(self.public_keys) - survivors)
        if len(survivors) < self.t:
            raise AggregationError("too_few_survivors", f"{len(survivors)} of threshold {self.t}")
        pairs = self._pair_seeds([s for s in shares if s.kind == "pair"], survivors, set(dropped))
        points = self._points([s for s in shares if s.kind != "pair"], survivors)
        # every dropped key is still reconstructed (its shares consistency-checked, as before pair seeds)
        wanted = [(u, "seed") for u in sorted(survivors)] + [(v, "key") for v in dropped
                                                            if survivors & set(self.peers(v))]
        secrets_ = reconstruct_all({k: points.get(k, []) for k in wanted}, self.t)
        total = np.zeros(self.dims, dtype=np.uint32)
        for y in self.masked.values():
            np.add(total, y, out=total)
        for u in sorted(survivors):
            np.subtract(total, prg(secrets_[(u, "seed")], self.dims), out=total)
        keys: dict[int, X25519PublicKey] = {}  # each survivor's key object once, not once per dropped peer
        dropped_keys = self._dropped_keys(secrets_)
        self._spot_check(pairs, dropped_keys, keys)
        for v in dropped:
            sk = dropped_keys.get(v)
            for u in sorted(survivors & set(self.peers(v))):
                # u added its pair mask with v; remove it
                if (v, u) in pairs:
                    seed = pairs[(v, u)]
                elif sk is not None:
                    if u not in keys:
                        keys[u] = X25519PublicKey.from_public_bytes(self.public_keys[u])
                    seed = _agree(sk, keys[u], min(u, v), max(u, v))
                else:
                    continue
                mask = prg(seed, self.dims)
                if u < v:
                    np.subtract(total, mask, out=total)
                else:
                    np.add(total, mask, out=total)
        return total
