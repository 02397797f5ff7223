"""Batched Ascon (NIST SP 800-232) for the hub: many messages per NumPy call.

Same algorithms as the scalar :mod:`.aead` and :mod:`.hashing`, computed on
bitsliced lanes (see :mod:`._bitslice`). Messages of unequal length share
one pass: lanes are sorted by block count, step ``j`` runs only on the
groups that still have a block ``j``, and inside a group where some lanes
are already done those lanes are restored after the step. Per-lane phase
(associated data or ciphertext), domain separation and final-block masks are
lane bit masks, so every message follows exactly its own schedule.

A forged envelope only fails itself: tags are compared per lane (the
comparison touches every lane's tag bits in full, independent of where they
differ), and a lane whose tag does not verify gets an
:class:`~iotguard.errors.IntegrityError` and its plaintext is zeroed before
any bytes are sliced out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from iotguard.crypto.ascon import aead as _scalar_aead
from iotguard.crypto.ascon import hashing as _scalar_hashing
from iotguard.crypto.ascon._bitslice import (
    LANES_PER_GROUP,
    Permutation,
    Words,
    constant_planes,
    from_planes,
    lane_bits,
    to_planes,
)
from iotguard.crypto.ascon._parameters import (
    AEAD128_IV,
    AEAD_RATE,
    CXOF128_IV,
    HASH256_IV,
    HASH_RATE,
    KEY_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    XOF128_IV,
)
from iotguard.crypto.ascon._permutation import WORD_MASK
from iotguard.errors import IntegrityError

__all__ = [
    "BATCH_BUFFER_BYTES",
    "BATCH_CHUNK_LANES",
    "MAX_BATCH_MESSAGE_SIZE",
    "aead_decrypt_batch",
    "aead_encrypt_batch",
    "cxof128_batch",
    "hash256_batch",
    "xof128_batch",
]

#: Lanes processed together; sized so the state and scratch planes stay in
#: a core's L2 cache.
BATCH_CHUNK_LANES = 8192
#: Upper bound on the padded input buffer of one chunk; chunks of long
#: messages hold fewer lanes.
BATCH_BUFFER_BYTES = 64 << 20
#: Messages longer than this (plaintext, ciphertext or associated data)
#: take the scalar path, so one huge message never pads a whole chunk.
MAX_BATCH_MESSAGE_SIZE = 1 << 20

IntArray = npt.NDArray[np.int64]
ByteMatrix = npt.NDArray[np.uint8]
_ALL = np.uint64(WORD_MASK)
_TOP_PLANE = 63  # the domain-separation bit is bit 63 of state word 4
_BYTE_OFFSETS = np.arange(16, dtype=np.int64)
# Planes of bit 0 of every byte: the 0x01 padding byte's only set bit.
_LOW_BIT_OF_EACH_BYTE = constant_planes(0x0101010101010101).reshape(1, 64, 1)


def _lengths(items: Sequence[bytes]) -> IntArray:
    return np.fromiter(map(len, items), dtype=np.int64, count=len(items))


def _place(rows: ByteMatrix, data: bytes, lengths: IntArray, columns: IntArray) -> None:
    """Copy lane ``i``'s bytes (consecutive in ``data``) to ``rows[i, columns[i]:]``."""
    n = len(lengths)
    if not len(data) or not n:
        return
    src = np.frombuffer(data, dtype=np.uint8)
    first = int(lengths[0])
    if (lengths == first).all() and (columns == columns[0]).all():
        col = int(columns[0])
        rows[:n, col : col + first] = src.reshape(n, first)
        return
    width = rows.shape[1]
    starts = np.cumsum(lengths) - lengths
    base = np.arange(n, dtype=np.int64) * width + columns - starts
    index = np.repeat(base, lengths) + np.arange(len(data), dtype=np.int64)
    rows.reshape(-1)[index] = src


def _gather(rows: ByteMatrix, lengths: IntArray, columns: IntArray) -> bytes:
    """Concatenate ``rows[i, columns[i] : columns[i] + lengths[i]]`` over lanes."""
    n = len(lengths)
    first = int(lengths[0]) if n else 0
    if n and (lengths == first).all() and (columns == columns[0]).all():
        col = int(columns[0])
        return rows[:n, col : col + first].tobytes()
    width = rows.shape[1]
    starts = np.cumsum(lengths) - lengths
    base = np.arange(n, dtype=np.int64) * width + columns - starts
    index = np.repeat(base, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return rows.reshape(-1)[index].tobytes()


def _split(data: bytes, lengths: IntArray) -> list[bytes]:
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    return [data[s:e] for s, e in zip(starts, ends, strict=True)]


def _chunks(blocks: IntArray, block_bytes: int) -> list[tuple[int, int]]:
    """Split lanes (sorted by descending block count) into chunks within the budgets."""
    out: list[tuple[int, int]] = []
    start, n = 0, len(blocks)
    while start < n:
        row = (int(blocks[start]) + 4) * block_bytes
        lanes = max(LANES_PER_GROUP, min(BATCH_CHUNK_LANES, BATCH_BUFFER_BYTES // row))
        lanes -= lanes % LANES_PER_GROUP
        out.append((start, min(n, start + lanes)))
        start += lanes
    return out


def _groups(lanes: int) -> int:
    return -(-lanes // LANES_PER_GROUP)


def _words(rows: ByteMatrix, groups: int) -> Words:
    """Lane-major byte rows padded to whole groups, as little-endian words."""
    n, width = rows.shape
    padded = np.zeros((groups * LANES_PER_GROUP, width), dtype=np.uint8)
    padded[:n] = rows
    return padded.view("<u8").astype(np.uint64, copy=False)


def _flags(values: npt.NDArray[np.bool_], groups: int) -> Words:
    padded = np.zeros(groups * LANES_PER_GROUP, dtype=np.bool_)
    padded[: len(values)] = values
    return lane_bits(padded)


def _byte_planes(select: npt.NDArray[np.bool_], groups: int) -> Words:
    """Planes (2, 64, g) from a per-lane, per-byte selection of shape (lanes, 16)."""
    n = select.shape[0]
    padded = np.zeros((groups * LANES_PER_GROUP, 16), dtype=np.bool_)
    padded[:n] = select
    per_byte = np.stack([lane_bits(padded[:, i]) for i in range(16)])
    return np.repeat(per_byte, 8, axis=0).reshape(2, 64, groups)


class _Steps:
    """Which groups and lanes take part in absorption step ``j``."""

    def __init__(self, blocks: IntArray, groups: int) -> None:
        self.blocks = blocks
        self.groups = groups
        padded = np.zeros(groups * LANES_PER_GROUP, dtype=np.int64)
        padded[: len(blocks)] = blocks
        per_group = padded.reshape(groups, LANES_PER_GROUP)
        self._group_max = per_group.max(axis=1)
        self._group_min = per_group.min(axis=1)

    def span(self, j: int) -> tuple[int, int]:
        """Return ``(full, width)``: groups ``[0, full)`` all take step ``j``,
        groups ``[full, width)`` only partly."""
        width = int(np.count_nonzero(self._group_max > j))
        full = int(np.count_nonzero(self._group_min > j))
        return full, width

    def active(self, j: int) -> Words:
        return _flags(self.blocks > j, self.groups)


def _absorb_steps(
    permutation: Permutation,
    state: Words,
    steps: _Steps,
    rounds: int,
    step: Callable[[int, int], None],
) -> None:
    """Run ``step(j, width)`` then Ascon-p[rounds] for every block index ``j``."""
    last = int(steps.blocks.max()) if len(steps.blocks) else 0
    for j in range(last):
        full, width = steps.span(j)
        saved = state[:, :, full:width].copy() if full < width else None
        step(j, width)
        permutation.apply(state, rounds, width)
        if saved is not None:
            keep = steps.active(j)[full:width]
            part = state[:, :, full:width]
            part ^= saved
            part &= keep
            part ^= saved


# --------------------------------------------------------------------------- AEAD


def _valid_lanes(
    keys: Sequence[bytes], nonces: Sequence[bytes], bodies: Sequence[bytes], min_body: int
) -> npt.NDArray[np.bool_]:
    ok = (_lengths(keys) == KEY_SIZE) & (_lengths(nonces) == NONCE_SIZE)
    return ok & (_lengths(bodies) >= min_body)  # type: ignore[no-any-return]


def _aead_chunk(
    keys: Sequence[bytes],
    nonces: Sequence[bytes],
    ads: Sequence[bytes],
    bodies: Sequence[bytes],
    decrypt: bool,
) -> tuple[list[bytes], npt.NDArray[np.bool_]]:
    """Seal or open one chunk of valid lanes (sorted by descending block count).

    Returns the per-lane outputs and, when decrypting, which lanes failed.
    """
    n = len(bodies)
    groups = _groups(n)
    ad_len = _lengths(ads)
    body_len = _lengths(bodies)
    data_len = body_len - TAG_SIZE if decrypt else body_len
    ad_blocks = np.where(ad_len > 0, ad_len // AEAD_RATE + 1, 0)
    full_blocks = data_len // AEAD_RATE
    blocks = ad_blocks + full_blocks
    rest = data_len - full_blocks * AEAD_RATE
    top = int(blocks.max())
    final_col = AEAD_RATE * top
    rows = np.zeros((n, AEAD_RATE * (top + 2) + AEAD_RATE), dtype=np.uint8)

    # Row layout: padded associated data, then the data blocks; the final
    # partial block at a fixed column (16 * top) and the tag after it.
    _place(rows, b"".join(ads), ad_len, np.zeros(n, dtype=np.int64))
    pad_lanes = np.flatnonzero(ad_len > 0)
    rows[pad_lanes, ad_len[pad_lanes]] = 1
    data_col = AEAD_RATE * ad_blocks
    _place(rows, b"".join(bodies), body_len, data_col)
    lane_index = np.arange(n, dtype=np.int64)[:, None]
    in_final = _BYTE_OFFSETS[None, :] < rest[:, None]
    final = rows[lane_index, (AEAD_RATE * blocks)[:, None] + _BYTE_OFFSETS] * in_final
    if decrypt:
        tag = rows[lane_index, (data_col + data_len)[:, None] + _BYTE_OFFSETS]
        rows[:, final_col + AEAD_RATE : final_col + 2 * AEAD_RATE] = tag
    rows[:, final_col : final_col + AEAD_RATE] = final

    stream = to_planes(_words(rows, groups))
    key_rows = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(n, KEY_SIZE)
    key = to_planes(_words(key_rows, groups))
    nonce_rows = np.frombuffer(b"".join(nonces), dtype=np.uint8).reshape(n, NONCE_SIZE)
    nonce = to_planes(_words(nonce_rows, groups))

    permutation = Permutation(groups)
    state = permutation.new_state()
    state[0] = constant_planes(AEAD128_IV)
    state[1] = key[0]
    np.invert(key[1], out=state[2])
    state[3] = nonce[0]
    state[4] = nonce[1]
    permutation.apply(state, 12, groups)
    state[3] ^= key[0]
    state[4] ^= key[1]

    out = np.zeros((2 * top + 4, 64, groups), dtype=np.uint64)
    steps = _Steps(blocks, groups)
    dsep = state[4, _TOP_PLANE]

    def step(j: int, width: int) -> None:
        in_data = _flags(ad_blocks <= j, groups)[:width]
        separate = _flags((ad_blocks == j) & (blocks > j), groups)[:width]
        dsep[:width] ^= separate
        for w in (0, 1):
            x = state[w, :, :width]
            block = stream[2 * j + w, :, :width]
            o = out[2 * j + w, :, :width]
            if decrypt:
                # P = S ^ C; the rate becomes C for data lanes, S ^ A for AD lanes.
                np.bitwise_xor(x, block, out=o)
                x &= in_data
                x ^= o
            else:
                x ^= block
                o[...] = x

    _absorb_steps(permutation, state, steps, 8, step)

    dsep ^= _flags(ad_blocks == blocks, groups)
    in_final_planes = _byte_planes(in_final, groups)
    pad_planes = _byte_planes(_BYTE_OFFSETS[None, :] == rest[:, None], groups)
    pad_planes &= _LOW_BIT_OF_EACH_BYTE
    for w in (0, 1):
        x = state[w]
        o = out[2 * top + w]
        if decrypt:
            np.bitwise_xor(x, stream[2 * top + w], out=o)
            o &= in_final_planes[w]
            x ^= o
        else:
            x ^= stream[2 * top + w]
            o[...] = x
        x ^= pad_planes[w]

    state[2] ^= key[0]
    state[3] ^= key[1]
    permutation.apply(state, 12, groups)
    state[3] ^= key[0]
    state[4] ^= key[1]

    data_out_col = data_col
    if decrypt:
        diff = state[3:5] ^ stream[2 * top + 2 : 2 * top + 4]
        bad_groups = np.bitwise_or.reduce(diff.reshape(128, groups), axis=0)
        bad = np.unpackbits(bad_groups.astype("<u8").view(np.uint8), bitorder="little").astype(np.bool_)[:n]
        plain_rows = from_planes(out[: 2 * top + 2]).view(np.uint8)[:n]
        plain_rows[bad] = 0
        flat = _stitch(plain_rows, data_out_col, full_blocks, rest, final_col)
        return _split(flat, data_len), bad
    out[2 * top + 2] = state[3]
    out[2 * top + 3] = state[4]
    sealed_rows = from_planes(out).view(np.uint8)[:n]
    flat = _stitch(sealed_rows, data_out_col, full_blocks, rest, final_col, with_tag=True)
    return _split(flat, data_len + TAG_SIZE), np.zeros(n, dtype=np.bool_)


def _stitch(
    rows: ByteMatrix,
    data_col: IntArray,
    full_blocks: IntArray,
    rest: IntArray,
    final_col: int,
    with_tag: bool = False,
) -> bytes:
    """Concatenate each lane's output: full blocks, final partial block, tag."""
    n = rows.shape[0]
    end = data_col + AEAD_RATE * full_blocks
    length = AEAD_RATE * full_blocks + rest
    lane = np.arange(n, dtype=np.int64)[:, None]
    if not (end == final_col).all():
        final = rows[:, final_col : final_col + AEAD_RATE].copy()
        rows[lane, end[:, None] + _BYTE_OFFSETS] = final
    if with_tag:
        tag = rows[:, final_col + AEAD_RATE : final_col + 2 * AEAD_RATE].copy()
        tag_col = end + rest
        if (tag_col == tag_col[0]).all():
            col = int(tag_col[0])
            rows[:, col : col + TAG_SIZE] = tag
        else:
            rows[lane, tag_col[:, None] + _BYTE_OFFSETS] = tag
        length = length + TAG_SIZE
    return _gather(rows, length, data_col)


def _aead_batch(
    keys: Sequence[bytes],
    nonces: Sequence[bytes],
    ads: Sequence[bytes],
    bodies: Sequence[bytes],
    decrypt: bool,
) -> list[bytes | IntegrityError]:
    n = len(bodies)
    if not len(keys) == len(nonces) == len(ads) == n:
        raise IntegrityError("ascon-aead128: batch inputs differ in length")
    results: list[bytes | IntegrityError] = [b""] * n
    valid = _valid_lanes(keys, nonces, bodies, TAG_SIZE if decrypt else 0)
    ad_len = _lengths(ads)
    body_len = _lengths(bodies)
    oversized = (ad_len > MAX_BATCH_MESSAGE_SIZE) | (body_len > MAX_BATCH_MESSAGE_SIZE)
    for i in np.flatnonzero(~valid).tolist():
        results[i] = IntegrityError("ascon-aead128: bad key, nonce or ciphertext length")
    scalar = _scalar_aead.aead_decrypt if decrypt else _scalar_aead.aead_encrypt
    for i in np.flatnonzero(valid & oversized).tolist():
        try:
            results[i] = scalar(keys[i], nonces[i], ads[i], bodies[i])
        except IntegrityError as exc:
            results[i] = exc
    batch = valid & ~oversized
    if not batch.any():
        return results
    data_len = body_len - TAG_SIZE if decrypt else body_len
    blocks = np.where(ad_len > 0, ad_len // AEAD_RATE + 1, 0) + data_len // AEAD_RATE
    lanes = np.flatnonzero(batch)
    if not (blocks[lanes] == blocks[lanes[0]]).all():
        lanes = lanes[np.argsort(-blocks[lanes], kind="stable")]
    order = lanes.tolist()
    for start, stop in _chunks(blocks[lanes], AEAD_RATE):
        part = order[start:stop]
        outputs, bad = _aead_chunk(
            [keys[i] for i in part],
            [nonces[i] for i in part],
            [ads[i] for i in part],
            [bodies[i] for i in part],
            decrypt,
        )
        for i, value in zip(part, outputs, strict=True):
            results[i] = value
        for k in np.flatnonzero(bad).tolist():
            results[part[k]] = IntegrityError("ascon-aead128: tag mismatch")
    return results


def aead_encrypt_batch(
    keys: Sequence[bytes],
    nonces: Sequence[bytes],
    associated_data: Sequence[bytes],
    plaintexts: Sequence[bytes],
) -> list[bytes]:
    """Seal many messages with Ascon-AEAD128, each under its own key and nonce.

    Item ``i`` of the result equals
    ``aead_encrypt(keys[i], nonces[i], associated_data[i], plaintexts[i])``.

    Raises:
        IntegrityError: the sequences differ in length, or a key or nonce
            has the wrong length.
    """
    sealed: list[bytes] = []
    for item in _aead_batch(keys, nonces, associated_data, plaintexts, decrypt=False):
        if isinstance(item, IntegrityError):
            raise item
        sealed.append(item)
    return sealed


def aead_decrypt_batch(
    keys: Sequence[bytes],
    nonces: Sequence[bytes],
    associated_data: Sequence[bytes],
    ciphertexts: Sequence[bytes],
) -> list[bytes | IntegrityError]:
    """Open many Ascon-AEAD128 ciphertexts, each under its own key and nonce.

    Item ``i`` of the result is the plaintext of ``ciphertexts[i]`` or an
    :class:`~iotguard.errors.IntegrityError` (code ``"forged"``) if its tag
    does not verify or a length is impossible. One forgery never affects
    other items, and no plaintext of a failed item is returned.

    Raises:
        IntegrityError: the four sequences differ in length.
    """
    return _aead_batch(keys, nonces, associated_data, ciphertexts, decrypt=True)


# ------------------------------------------------------------- hash and XOFs


def _sponge_chunk(iv: int, streams: Sequence[bytes], length: int) -> list[bytes]:
    """Absorb pre-padded 8-byte-block streams under ``iv``; squeeze ``length`` bytes."""
    n = len(streams)
    groups = _groups(n)
    stream_len = _lengths(streams)
    blocks = stream_len // HASH_RATE
    top = int(blocks.max())
    rows = np.zeros((n, HASH_RATE * top), dtype=np.uint8)
    _place(rows, b"".join(streams), stream_len, np.zeros(n, dtype=np.int64))
    stream = to_planes(_words(rows, groups))

    permutation = Permutation(groups)
    state = permutation.new_state()
    state[0] = constant_planes(iv)
    state[1] = 0
    state[2] = _ALL
    state[3] = 0
    state[4] = 0
    permutation.apply(state, 12, groups)

    def step(j: int, width: int) -> None:
        state[0, :, :width] ^= stream[j, :, :width]

    _absorb_steps(permutation, state, _Steps(blocks, groups), 12, step)
    count = -(-length // HASH_RATE)
    out = np.empty((count, 64, groups), dtype=np.uint64)
    for k in range(count):
        out[k] = state[0]
        if k + 1 < count:
            permutation.apply(state, 12, groups)
    digest = from_planes(out).view(np.uint8)[:n, :length]
    data = digest.tobytes()
    return [data[i * length : (i + 1) * length] for i in range(n)]


def _padded(messages: Sequence[bytes]) -> list[bytes]:
    """Pad each message with 0x01 and zeros to a multiple of 8 bytes."""
    pads = [b"\x01" + bytes(7 - k) for k in range(HASH_RATE)]
    return [m + pads[len(m) % HASH_RATE] for m in messages]


def _sponge_batch(iv: int, streams: list[bytes], length: int) -> list[bytes]:
    n = len(streams)
    if not n or length == 0:
        return [b""] * n
    blocks = _lengths(streams) // HASH_RATE
    order = np.argsort(-blocks, kind="stable")
    results: list[bytes] = [b""] * n
    for start, stop in _chunks(blocks[order], HASH_RATE):
        part = order[start:stop].tolist()
        for i, value in zip(part, _sponge_chunk(iv, [streams[i] for i in part], length), strict=True):
            results[i] = value
    return results


def hash256_batch(messages: Sequence[bytes]) -> list[bytes]:
    """Ascon-Hash256 of each message (item ``i`` equals ``hash256(messages[i])``)."""
    return _sponge_batch(HASH256_IV, _padded(messages), _scalar_hashing.HASH256_SIZE)


def xof128_batch(messages: Sequence[bytes], length: int) -> list[bytes]:
    """Ascon-XOF128 of each message, ``length`` bytes each.

    Raises:
        ConfigError: ``length`` is negative or above ``MAX_XOF_OUTPUT``.
    """
    _scalar_hashing.check_output_length(length)
    return _sponge_batch(XOF128_IV, _padded(messages), length)


def cxof128_batch(
    messages: Sequence[bytes],
    length: int,
    customization: bytes | Sequence[bytes] = b"",
) -> list[bytes]:
    """Ascon-CXOF128 of each message, ``length`` bytes each.

    Args:
        messages: Inputs.
        length: Output length in bytes.
        customization: One customization string for every message, or one
            per message.

    Raises:
        ConfigError: ``length`` is negative or above ``MAX_XOF_OUTPUT``.
        MalformedError: a customization string is longer than 256 bytes.
    """
    _scalar_hashing.check_output_length(length)
    if isinstance(customization, bytes | bytearray | memoryview):
        names: Sequence[bytes] = [bytes(customization)] * len(messages)
    else:
        names = customization
    if len(names) != len(messages):
        raise IntegrityError("ascon-cxof128: one customization string per message")
    for name in set(names):
        _scalar_hashing.check_customization(name)
    padded_names = _padded(names)
    padded_messages = _padded(messages)
    streams = [
        (8 * len(z)).to_bytes(HASH_RATE, "little") + pz + pm
        for z, pz, pm in zip(names, padded_names, padded_messages, strict=True)
    ]
    return _sponge_batch(CXOF128_IV, streams, length)
