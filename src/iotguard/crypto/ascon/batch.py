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

import struct
from collections.abc import Sequence

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
    lane_flags,
    new_planes,
    to_planes,
)
from iotguard.crypto.ascon._lanes import (
    ByteMatrix,
    IntArray,
    Lanes,
    Steps,
    absorb_steps,
    byte_planes,
    chunks,
    constant_block_planes,
    gather,
    lengths,
    place,
    row_bytes,
    split,
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
from iotguard.crypto.ascon._permutation import WORD_MASK, p12
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
BATCH_CHUNK_LANES = 16384
#: Upper bound on the padded input buffer of one chunk; chunks of long
#: messages hold fewer lanes.
BATCH_BUFFER_BYTES = 64 << 20
#: Messages longer than this (plaintext, ciphertext or associated data)
#: take the scalar path, so one huge message never pads a whole chunk.
MAX_BATCH_MESSAGE_SIZE = 1 << 20

_ALL = np.uint64(WORD_MASK)
_NONE = np.uint64(0)
_TOP_PLANE = 63  # the domain-separation bit is bit 63 of state word 4
_BYTE_OFFSETS = np.arange(16, dtype=np.int64)
# Planes of bit 0 of every byte: the 0x01 padding byte's only set bit.
_LOW_BIT_OF_EACH_BYTE = constant_planes(0x0101010101010101).reshape(1, 64, 1)


# --------------------------------------------------------------------------- AEAD


def _aead_chunk(
    keys: Sequence[bytes],
    nonces: Sequence[bytes],
    ads: Sequence[bytes],
    bodies: Sequence[bytes],
    ad_len: IntArray,
    body_len: IntArray,
    decrypt: bool,
) -> tuple[list[bytes], npt.NDArray[np.bool_]]:
    """Seal or open one chunk of valid messages (sorted by descending block count).

    Returns the per-message outputs and, when decrypting, which ones failed.
    """
    n = len(bodies)
    data_len = body_len - TAG_SIZE if decrypt else body_len
    ad_blocks = np.where(ad_len > 0, ad_len // AEAD_RATE + 1, 0)
    full_blocks = data_len // AEAD_RATE
    blocks = ad_blocks + full_blocks
    rest = data_len - full_blocks * AEAD_RATE
    top = int(blocks[0])
    uniform = bool((ad_len == ad_len[0]).all() and (body_len == body_len[0]).all())
    lanes = Lanes(n, interleave=not uniform)
    groups = lanes.groups
    # A uniform batch of whole blocks has an empty final block: skip its words.
    has_final = not uniform or int(rest[0]) > 0
    final_words = 2 if has_final else 0
    final_col = AEAD_RATE * top
    tag_col = final_col + AEAD_RATE * (final_words // 2)

    # Row layout per message: key, nonce, padded associated data, data
    # blocks; the final partial block at a fixed column and the tag after it.
    head = KEY_SIZE + NONCE_SIZE
    rows = np.zeros((lanes.size, head + tag_col + TAG_SIZE), dtype=np.uint8)
    rows[:n, :KEY_SIZE] = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(n, KEY_SIZE)
    rows[:n, KEY_SIZE:head] = np.frombuffer(b"".join(nonces), dtype=np.uint8).reshape(n, NONCE_SIZE)
    body = rows[:n, head:]
    place(body, b"".join(ads), ad_len, np.zeros(n, dtype=np.int64))
    data_col = AEAD_RATE * ad_blocks
    if uniform:
        if ad_len[0]:
            body[:, ad_len[0]] = 1
        place(body, b"".join(bodies), body_len, data_col)
        end = final_col + int(rest[0])
        if decrypt and has_final:
            tag = body[:, end : end + TAG_SIZE].copy()
            body[:, end:] = 0
            body[:, final_col + AEAD_RATE :] = tag
    else:
        pad_lanes = np.flatnonzero(ad_len > 0)
        body[pad_lanes, ad_len[pad_lanes]] = 1
        place(body, b"".join(bodies), body_len, data_col)
        index = np.arange(n, dtype=np.int64)[:, None]
        in_final = _BYTE_OFFSETS[None, :] < rest[:, None]
        final = body[index, (AEAD_RATE * blocks)[:, None] + _BYTE_OFFSETS] * in_final
        if decrypt:
            body[:, final_col + AEAD_RATE :] = body[index, (data_col + data_len)[:, None] + _BYTE_OFFSETS]
        body[:, final_col : final_col + AEAD_RATE] = final

    planes = to_planes(lanes.words(rows))
    key = planes[0:2]
    stream = planes[4:]
    lane_ad_blocks = lanes.spread(ad_blocks)
    lane_blocks = lanes.spread(blocks)
    lane_rest = lanes.spread(rest)

    permutation = Permutation(groups)
    state = permutation.state
    state[0] = constant_planes(AEAD128_IV)
    state[1] = key[0]
    state[2] = key[1]
    state[3:5] = planes[2:4]
    permutation.apply(12, groups)
    state[3:5] ^= key

    out = new_planes(2 * top + final_words + (0 if decrypt else 2), groups)
    steps = Steps(lane_blocks, groups)
    dsep = state[4, _TOP_PLANE]

    def step(j: int, width: int) -> None:
        in_data: Words | np.uint64
        if uniform:
            # Every lane is in the same phase: masks are whole words.
            in_data = _ALL if j >= ad_blocks[0] else _NONE
            if j == ad_blocks[0]:
                np.bitwise_xor(dsep, _ALL, out=dsep)
        else:
            in_data = lane_bits(lane_ad_blocks <= j)[:width]
            dsep[:width] ^= lane_bits((lane_ad_blocks == j) & (lane_blocks > j))[:width]
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

    absorb_steps(permutation, state, steps, 8, step)

    in_final_planes: Words
    pad_planes: Words
    if uniform:
        if ad_blocks[0] == blocks[0]:
            np.bitwise_xor(dsep, _ALL, out=dsep)
        r = int(rest[0])
        in_final_planes = constant_block_planes((1 << (8 * r)) - 1)
        pad_planes = constant_block_planes(1 << (8 * r))
    else:
        dsep ^= lane_bits(lane_ad_blocks == lane_blocks)
        in_final_planes = byte_planes(_BYTE_OFFSETS[None, :] < lane_rest[:, None])
        pad_planes = byte_planes(_BYTE_OFFSETS[None, :] == lane_rest[:, None])
        pad_planes &= _LOW_BIT_OF_EACH_BYTE
    for w in (0, 1):
        x = state[w]
        if has_final:
            o = out[2 * top + w]
            if decrypt:
                np.bitwise_xor(x, stream[2 * top + w], out=o)
                o &= in_final_planes[w]
                x ^= o
            else:
                x ^= stream[2 * top + w]
                o[...] = x
        x ^= pad_planes[w]

    state[2:4] ^= key
    permutation.apply(12, groups)
    state[3:5] ^= key

    if decrypt:
        tag_word = 2 * top + final_words
        diff = state[3:5] ^ stream[tag_word : tag_word + 2]
        bad_groups = np.bitwise_or.reduce(diff.reshape(128, groups), axis=0)
        bad_lanes = lane_flags(bad_groups)
        bad = bad_lanes if lanes.order is None else bad_lanes[np.argsort(lanes.order)]
        bad = bad[:n]
        plain = lanes.rows(from_planes(out))
        plain[bad] = 0
        return _stitch(plain, data_col, full_blocks, rest, final_col), bad
    out[2 * top + final_words] = state[3]
    out[2 * top + final_words + 1] = state[4]
    sealed = lanes.rows(from_planes(out))
    return _stitch(sealed, data_col, full_blocks, rest, final_col, tag_col), np.zeros(n, dtype=np.bool_)


def _stitch(
    rows: ByteMatrix,
    data_col: IntArray,
    full_blocks: IntArray,
    rest: IntArray,
    final_col: int,
    tag_col: int | None = None,
) -> list[bytes]:
    """Each message's output: full blocks, final partial block, then the tag."""
    n = rows.shape[0]
    end = data_col + AEAD_RATE * full_blocks
    length = AEAD_RATE * full_blocks + rest
    if (end == final_col).all() and (rest == rest[0]).all() and (data_col == data_col[0]).all():
        # Uniform batch: the data is already contiguous in every row.
        col, size = int(data_col[0]), int(length[0])
        if tag_col is None:
            return row_bytes(rows[:, col : col + size])
        if tag_col != col + size:
            tag = rows[:, tag_col : tag_col + TAG_SIZE].copy()
            rows[:, col + size : col + size + TAG_SIZE] = tag
        return row_bytes(rows[:, col : col + size + TAG_SIZE])
    index = np.arange(n, dtype=np.int64)[:, None]
    final = rows[:, final_col : final_col + AEAD_RATE].copy()
    rows[index, end[:, None] + _BYTE_OFFSETS] = final
    if tag_col is not None:
        tag = rows[:, tag_col : tag_col + TAG_SIZE].copy()
        rows[index, (end + rest)[:, None] + _BYTE_OFFSETS] = tag
        length = length + TAG_SIZE
    return split(gather(rows, length, data_col), length)


def _same_size(items: Sequence[bytes]) -> int | None:
    """The common length of ``items``, or ``None`` if they differ."""
    sizes = set(map(len, items))
    return sizes.pop() if len(sizes) == 1 else None


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
    results: list[bytes | IntegrityError] = []
    # Slices of one chunk are checked and joined back to back, while their
    # objects are still in cache.
    start = 0
    while start < n:
        row = len(ads[start]) + len(bodies[start]) + 4 * AEAD_RATE
        lanes = max(LANES_PER_GROUP, min(BATCH_CHUNK_LANES, BATCH_BUFFER_BYTES // row))
        stop = min(n, start + lanes - lanes % LANES_PER_GROUP)
        part = (keys[start:stop], nonces[start:stop], ads[start:stop], bodies[start:stop])
        if _is_uniform(*part, decrypt):
            count = stop - start
            ad_len = np.full(count, len(part[2][0]), dtype=np.int64)
            body_len = np.full(count, len(part[3][0]), dtype=np.int64)
            outputs, bad = _aead_chunk(*part, ad_len, body_len, decrypt)
            first = len(results)
            results.extend(outputs)
            for k in np.flatnonzero(bad).tolist():
                results[first + k] = IntegrityError("ascon-aead128: tag mismatch")
        else:
            results.extend(_aead_mixed(*part, decrypt))
        start = stop
    return results


def _is_uniform(
    keys: Sequence[bytes], nonces: Sequence[bytes], ads: Sequence[bytes], bodies: Sequence[bytes], decrypt: bool
) -> bool:
    """Whether every message has valid key and nonce sizes and the same shape."""
    ad_size = _same_size(ads)
    body_size = _same_size(bodies)
    return (
        ad_size is not None
        and body_size is not None
        and (TAG_SIZE if decrypt else 0) <= body_size <= MAX_BATCH_MESSAGE_SIZE
        and ad_size <= MAX_BATCH_MESSAGE_SIZE
        and _same_size(keys) == KEY_SIZE
        and _same_size(nonces) == NONCE_SIZE
    )


def _aead_mixed(
    keys: Sequence[bytes],
    nonces: Sequence[bytes],
    ads: Sequence[bytes],
    bodies: Sequence[bytes],
    decrypt: bool,
) -> list[bytes | IntegrityError]:
    """Messages of different shapes (or with invalid sizes), sorted into chunks by length."""
    n = len(bodies)
    min_body = TAG_SIZE if decrypt else 0
    results: list[bytes | IntegrityError] = [b""] * n
    key_len = lengths(keys)
    nonce_len = lengths(nonces)
    ad_len = lengths(ads)
    body_len = lengths(bodies)
    valid = (key_len == KEY_SIZE) & (nonce_len == NONCE_SIZE) & (body_len >= min_body)
    oversized = (ad_len > MAX_BATCH_MESSAGE_SIZE) | (body_len > MAX_BATCH_MESSAGE_SIZE)
    for i in np.flatnonzero(~valid).tolist():
        results[i] = IntegrityError("ascon-aead128: bad key, nonce or ciphertext length")
    scalar = _scalar_aead.aead_decrypt if decrypt else _scalar_aead.aead_encrypt
    for i in np.flatnonzero(valid & oversized).tolist():
        try:
            results[i] = scalar(keys[i], nonces[i], ads[i], bodies[i])
        except IntegrityError as exc:
            results[i] = exc
    chosen = np.flatnonzero(valid & ~oversized)
    if not len(chosen):
        return results
    data_len = body_len - min_body
    blocks = np.where(ad_len > 0, ad_len // AEAD_RATE + 1, 0) + data_len // AEAD_RATE
    chosen = chosen[np.argsort(-blocks[chosen], kind="stable")]
    for start, stop in chunks(blocks[chosen], AEAD_RATE, BATCH_CHUNK_LANES, BATCH_BUFFER_BYTES):
        part = chosen[start:stop]
        order = part.tolist()
        outputs, bad = _aead_chunk(
            [keys[i] for i in order],
            [nonces[i] for i in order],
            [ads[i] for i in order],
            [bodies[i] for i in order],
            ad_len[part],
            body_len[part],
            decrypt,
        )
        for i, value in zip(order, outputs, strict=True):
            results[i] = value
        for k in np.flatnonzero(bad).tolist():
            results[order[k]] = IntegrityError("ascon-aead128: tag mismatch")
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


def _sponge_chunk(iv: int, streams: Sequence[bytes], stream_len: IntArray, length: int) -> list[bytes]:
    """Absorb pre-padded 8-byte-block streams under ``iv``; squeeze ``length`` bytes."""
    n = len(streams)
    blocks = stream_len // HASH_RATE
    top = int(blocks[0])
    lanes = Lanes(n, interleave=not bool((blocks == top).all()))
    groups = lanes.groups
    rows = np.zeros((n, HASH_RATE * top), dtype=np.uint8)
    place(rows, b"".join(streams), stream_len, np.zeros(n, dtype=np.int64))
    stream = to_planes(lanes.words(rows))

    permutation = Permutation(groups)
    state = permutation.state
    state[0] = constant_planes(iv)
    state[1] = 0
    state[2] = 0
    state[3] = 0
    state[4] = 0
    permutation.apply(12, groups)

    def step(j: int, width: int) -> None:
        state[0, :, :width] ^= stream[j, :, :width]

    absorb_steps(permutation, state, Steps(lanes.spread(blocks), groups), 12, step)
    count = -(-length // HASH_RATE)
    out = new_planes(count, groups)
    for k in range(count):
        out[k] = state[0]
        if k + 1 < count:
            permutation.apply(12, groups)
    digest = lanes.rows(from_planes(out))[:, :length]
    return split(digest.tobytes(), np.full(n, length, dtype=np.int64))


def _padded(messages: Sequence[bytes]) -> list[bytes]:
    """Pad each message with 0x01 and zeros to a multiple of 8 bytes."""
    pads = [b"\x01" + bytes(7 - k) for k in range(HASH_RATE)]
    return [m + pads[len(m) % HASH_RATE] for m in messages]


def _scalar_sponge(iv: int, stream: bytes, length: int) -> bytes:
    """The scalar sponge over a pre-padded stream (for messages too long to batch)."""
    x0, x1, x2, x3, x4 = p12(iv, 0, 0, 0, 0)
    for (word,) in struct.iter_unpack("<Q", stream):
        x0, x1, x2, x3, x4 = p12(x0 ^ word, x1, x2, x3, x4)
    words = [x0]
    while len(words) * HASH_RATE < length:
        x0, x1, x2, x3, x4 = p12(x0, x1, x2, x3, x4)
        words.append(x0)
    return struct.pack(f"<{len(words)}Q", *words)[:length]


def _sponge_batch(iv: int, streams: list[bytes], length: int) -> list[bytes]:
    n = len(streams)
    if not n or length == 0:
        return [b""] * n
    stream_len = lengths(streams)
    blocks = stream_len // HASH_RATE
    results: list[bytes] = [b""] * n
    oversized = stream_len > MAX_BATCH_MESSAGE_SIZE
    for i in np.flatnonzero(oversized).tolist():
        results[i] = _scalar_sponge(iv, streams[i], length)
    order = np.flatnonzero(~oversized)
    order = order[np.argsort(-blocks[order], kind="stable")]
    for start, stop in chunks(blocks[order], HASH_RATE, BATCH_CHUNK_LANES, BATCH_BUFFER_BYTES):
        part = order[start:stop]
        chosen = part.tolist()
        outputs = _sponge_chunk(iv, [streams[i] for i in chosen], stream_len[part], length)
        for i, value in zip(chosen, outputs, strict=True):
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
