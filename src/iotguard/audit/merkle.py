"""RFC 9162 Merkle tree hashing, proofs and proof verification.

A pure library: every function takes hashes and sizes and returns hashes, or
raises :class:`~iotguard.errors.ProofError`. Names follow RFC 9162 section
2.1 (``MTH``, ``PATH``, ``PROOF``) and, for subtrees, the Merkle Tree
Certificates draft (draft-ietf-plants-merkle-tree-certs, section 4), whose
subtree proofs generalise RFC 9162 consistency proofs to an interval
``[start, end)`` that is not a prefix of the log.

The proof *generators* here take the full list of leaf hashes; they are the
reference the store-backed forms in :mod:`iotguard.audit.tree` are tested
against. The *verifiers* need only the proof and are what an auditor runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from iotguard.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_PROOF_LENGTH",
    "MAX_TREE_SIZE",
    "consistency_proof",
    "inclusion_proof",
    "is_valid_subtree",
    "leaf_hash",
    "node_hash",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_hash",
    "subtree_consistency_proof",
    "verify_consistency",
    "verify_inclusion",
    "verify_subtree_consistency",
    "verify_subtree_inclusion",
]

#: Size of a SHA-256 tree hash in bytes.
HASH_SIZE = 32
#: MTH of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: Largest tree size a proof may claim (RFC 9162 sizes are uint64).
MAX_TREE_SIZE = (1 << 63) - 1
#: A proof in a tree of at most 2**63 leaves has at most 2 * 63 hashes.
MAX_PROOF_LENGTH = 128

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: ``SHA-256(0x00 || data)``."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes (RFC 9162 section 2.1.1).

    Runs in O(n) with a stack of complete-subtree roots instead of recursion.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    stack: list[tuple[int, bytes]] = []
    for h in leaf_hashes:
        size, node = 1, h
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            node = node_hash(left, node)
            size += left_size
        stack.append((size, node))
    _, node = stack.pop()
    while stack:
        _, left = stack.pop()
        node = node_hash(left, node)
    return node


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form ``PATH(index, D[0:size])``, bottom-up."""
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    ranges.reverse()
    return ranges


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form ``PROOF(old_size, D[0:new_size])``, in order."""
    ranges: list[tuple[int, int]] = []
    lo, hi, known = 0, new_size, True
    m = old_size
    while True:
        n = hi - lo
        if m == n:
            if not known:
                ranges.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, known = lo + k, m - k, False
    ranges.reverse()
    return ranges


def _check_size(size: int, name: str) -> None:
    if not 0 <= size <= MAX_TREE_SIZE:
        raise ProofError(f"{name} out of range")


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(index, D_n)``: the audit path of leaf ``index`` (RFC 9162 2.1.3.1).

    Raises:
        ProofError: ``index`` is not a leaf of the tree.
    """
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise ProofError("leaf index is outside the tree")
    return [root_hash(leaf_hashes[a:b]) for a, b in _inclusion_ranges(index, size)]


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """``PROOF(old_size, D_n)`` between the prefix of ``old_size`` leaves and the tree.

    Raises:
        ProofError: ``old_size`` is not in ``1..n`` (a proof from the empty
            tree proves nothing and RFC 9162 does not define one).
    """
    size = len(leaf_hashes)
    if not 0 < old_size <= size:
        raise ProofError("old size must be in 1..tree size")
    return [root_hash(leaf_hashes[a:b]) for a, b in _consistency_ranges(old_size, size)]


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")


def _check_proof(proof: Sequence[bytes]) -> None:
    if len(proof) > MAX_PROOF_LENGTH:
        raise ProofError("proof is too long")
    for p in proof:
        _check_hash(p, "proof element")


def root_from_inclusion_proof(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes]) -> bytes:
    """Root implied by an inclusion proof (RFC 9162 section 2.1.3.2, steps 1-5).

    Raises:
        ProofError: the index is outside the tree or the proof has the wrong
            shape for ``(index, tree_size)``.
    """
    _check_size(tree_size, "tree size")
    if not 0 <= index < tree_size:
        raise ProofError("leaf index is outside the tree")
    _check_hash(leaf, "leaf hash")
    _check_proof(proof)
    fn, sn, r = index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree ``(tree_size, root)``.

    Raises:
        ProofError: the proof does not verify.
    """
    _check_hash(root, "root hash")
    if root_from_inclusion_proof(leaf_hash, index, tree_size, proof) != root:
        raise ProofError("inclusion proof does not lead to the root")


def root_from_consistency_proof(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> bytes:
    """Verify the old-root half of a consistency proof; return the new root it implies.

    RFC 9162 section 2.1.4.2 for ``0 < old_size < new_size``.

    Raises:
        ProofError: the sizes are out of order, the proof has the wrong shape,
            or it does not lead to ``old_root``.
    """
    _check_size(old_size, "old size")
    _check_size(new_size, "new size")
    if old_size > new_size:
        raise ProofError("old size is larger than new size")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the empty tree has a fixed root")
        return old_root
    if old_size == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if not proof:
        raise ProofError("consistency proof is empty")
    _check_hash(old_root, "old root")
    _check_proof(proof)
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    return sr


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that tree ``(new_size, new_root)`` extends tree ``(old_size, old_root)``.

    Raises:
        ProofError: the proof does not verify (including rollback: ``old_size
            > new_size``, and a fork: equal sizes with different roots).
    """
    if root_from_consistency_proof(old_size, new_size, old_root, proof) != new_root:
        raise ProofError("consistency proof does not lead to the new root")


# -- subtrees (Merkle Tree Certificates draft, section 4) --------------------


def is_valid_subtree(start: int, end: int) -> bool:
    """Whether ``[start, end)`` is a subtree: ``start`` is a multiple of BIT_CEIL(end - start)."""
    if not 0 <= start <= end:
        return False
    size = end - start
    if size == 0:
        return True
    return start % (1 << (size - 1).bit_length()) == 0


def _subtree_path(start: int, end: int, tree_size: int) -> tuple[int, int, list[bool]]:
    """Descend from the root to the smallest node ``[lo, hi)`` with ``lo == start``.

    Returns ``(lo, hi, path)`` where ``path[i]`` is True when the sibling at
    depth ``i`` (top-down) lies to the left.
    """
    lo, hi = 0, tree_size
    path: list[bool] = []
    while lo < start:
        k = _split(hi - lo)
        if end <= lo + k:
            path.append(False)
            hi = lo + k
        elif start >= lo + k:
            path.append(True)
            lo += k
        else:
            raise ProofError("subtree straddles a node boundary")
    return lo, hi, path


def subtree_consistency_proof(leaf_hashes: Sequence[bytes], start: int, end: int) -> list[bytes]:
    """``SUBTREE_PROOF(start, end, D_n)``: the subtree ``[start, end)`` sits in the tree.

    Raises:
        ProofError: ``[start, end)`` is not a non-empty subtree of the tree.
    """
    size = len(leaf_hashes)
    if not is_valid_subtree(start, end) or start == end or end > size:
        raise ProofError("not a subtree of this tree")
    lo, hi, path = _subtree_path(start, end, size)
    siblings: list[bytes] = []
    a, b = 0, size
    for left in path:
        k = _split(b - a)
        if left:
            siblings.append(root_hash(leaf_hashes[a : a + k]))
            a += k
        else:
            siblings.append(root_hash(leaf_hashes[a + k : b]))
            b = a + k
    inner = [] if end == hi else consistency_proof(leaf_hashes[lo:hi], end - lo)
    return inner + siblings[::-1]


def verify_subtree_consistency(
    start: int, end: int, tree_size: int, subtree_hash: bytes, root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that ``subtree_hash`` is the hash of subtree ``[start, end)`` of ``(tree_size, root)``.

    An empty subtree is consistent with every tree; its hash must then be
    :data:`EMPTY_ROOT` and its proof empty.

    Raises:
        ProofError: the interval is not a subtree of the tree or the proof
            does not verify.
    """
    _check_size(tree_size, "tree size")
    if not is_valid_subtree(start, end) or end > tree_size:
        raise ProofError("not a subtree of this tree")
    if start == end:
        if proof or subtree_hash != EMPTY_ROOT:
            raise ProofError("an empty subtree has an empty proof and the empty root")
        return
    _check_proof(proof)
    lo, hi, path = _subtree_path(start, end, tree_size)
    if len(proof) < len(path):
        raise ProofError("subtree proof is too short")
    split = len(proof) - len(path)
    node = root_from_consistency_proof(end - lo, hi - lo, subtree_hash, proof[:split])
    for sibling, left in zip(proof[split:], reversed(path), strict=True):
        node = node_hash(sibling, node) if left else node_hash(node, sibling)
    if node != root:
        raise ProofError("subtree proof does not lead to the root")


def verify_subtree_inclusion(
    leaf_hash: bytes, index: int, start: int, end: int, proof: Sequence[bytes], subtree_hash: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the subtree ``[start, end)``.

    Raises:
        ProofError: the interval is not a non-empty subtree, the index is
            outside it, or the proof does not verify.
    """
    if not is_valid_subtree(start, end) or start == end or end > MAX_TREE_SIZE:
        raise ProofError("not a non-empty subtree")
    if not start <= index < end:
        raise ProofError("leaf index is outside the subtree")
    verify_inclusion(leaf_hash, index - start, end - start, proof, subtree_hash)
