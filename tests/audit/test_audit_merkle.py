"""Round trips of the Merkle core over every small tree shape."""

from __future__ import annotations

import pytest

from iotguard.audit import merkle
from iotguard.errors import ProofError

LEAVES = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(40)]


def test_every_inclusion_and_consistency_proof_round_trips() -> None:
    for n in range(1, 34):
        tree = LEAVES[:n]
        root = merkle.root_hash(tree)
        for i in range(n):
            merkle.verify_inclusion(tree[i], i, n, merkle.inclusion_proof(tree, i), root)
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(tree, m)
            merkle.verify_consistency(m, n, merkle.root_hash(tree[:m]), root, proof)


def test_every_subtree_proof_round_trips() -> None:
    for n in range(1, 34):
        tree = LEAVES[:n]
        root = merkle.root_hash(tree)
        for start in range(n):
            for end in range(start + 1, n + 1):
                if not merkle.is_valid_subtree(start, end):
                    continue
                sub = merkle.root_hash(tree[start:end])
                proof = merkle.subtree_consistency_proof(tree, start, end)
                merkle.verify_subtree_consistency(start, end, n, sub, root, proof)
                with pytest.raises(ProofError):
                    merkle.verify_subtree_consistency(start, end, n, LEAVES[39], root, proof)


def test_wrong_leaf_index_size_and_root_are_rejected() -> None:
    tree = LEAVES[:11]
    root = merkle.root_hash(tree)
    proof = merkle.inclusion_proof(tree, 5)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(tree[5], 6, 11, proof, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(tree[5], 5, 5, proof, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(tree[6], 5, 11, proof, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(tree[5], 5, 11, proof, merkle.root_hash(tree[:10]))


def test_consistency_rejects_rollback_and_fork() -> None:
    tree = LEAVES[:9]
    proof = merkle.consistency_proof(tree, 5)
    old, new = merkle.root_hash(tree[:5]), merkle.root_hash(tree)
    with pytest.raises(ProofError):
        merkle.verify_consistency(9, 5, new, old, proof)  # rollback
    forked = [*LEAVES[:5], *LEAVES[30:34]]
    with pytest.raises(ProofError):
        merkle.verify_consistency(5, 9, old, merkle.root_hash(forked), proof)
    with pytest.raises(ProofError):
        merkle.verify_consistency(9, 9, new, merkle.root_hash(forked), [])
