"""RFC 9162 / MTC subtree proofs against the transparency-dev/merkle vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from iotguard.audit import merkle
from iotguard.errors import ProofError

KINDS = ("inclusion", "consistency", "subtreeinclusion", "subtreeconsistency")


def _cases(vectors_dir: Path, kind: str) -> list[tuple[str, dict[str, Any]]]:
    root = vectors_dir / "merkle" / "testdata" / kind
    files = sorted(root.rglob("*.json"))
    return [(str(f.relative_to(root)), json.loads(f.read_text())) for f in files]


def _b(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b(p) for p in case.get("proof") or []]


def _run(kind: str, case: dict[str, Any]) -> None:
    if kind == "inclusion":
        merkle.verify_inclusion(
            _b(case["leafHash"]), case["leafIdx"], case["treeSize"], _proof(case), _b(case["root"])
        )
    elif kind == "consistency":
        merkle.verify_consistency(
            case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]), _proof(case)
        )
    elif kind == "subtreeinclusion":
        merkle.verify_subtree_inclusion(
            _b(case["leafHash"]), case["leafIdx"], case["start"], case["end"], _proof(case), _b(case["root"])
        )
    else:
        merkle.verify_subtree_consistency(
            case["start"], case["end"], case["size"], _b(case["root1"]), _b(case["root2"]), _proof(case)
        )


@pytest.mark.parametrize("kind", KINDS)
def test_every_vector(vectors_dir: Path, kind: str) -> None:
    cases = _cases(vectors_dir, kind)
    assert len(cases) > 20
    failures = []
    for name, case in cases:
        try:
            _run(kind, case)
            accepted = True
        except ProofError:
            accepted = False
        if accepted == case["wantErr"]:
            failures.append(f"{name}: {case['desc']} (wantErr={case['wantErr']})")
    assert not failures, "\n".join(failures)


def _leaves(vectors_dir: Path) -> tuple[list[bytes], list[bytes]]:
    data = json.loads((vectors_dir / "merkle" / "roots.json").read_text())
    leaves = [merkle.leaf_hash(bytes.fromhex(x)) for x in data["leaf_inputs_hex"]]
    roots = [bytes.fromhex(x) for x in data["root_hashes_by_size_hex"]]
    return leaves, roots


def test_roots_json(vectors_dir: Path) -> None:
    leaves, roots = _leaves(vectors_dir)
    for size, want in enumerate(roots):
        assert merkle.root_hash(leaves[:size]) == want


def test_generated_proofs_match_vector_proofs(vectors_dir: Path) -> None:
    """Our generators produce the exact happy-path proofs of the vectors."""
    leaves, _ = _leaves(vectors_dir)
    checked = 0
    for _, case in _cases(vectors_dir, "inclusion"):
        if not case["wantErr"] and case["treeSize"] <= len(leaves) and case["treeSize"] > 0:
            tree = leaves[: case["treeSize"]]
            if merkle.root_hash(tree) == _b(case["root"]):
                assert merkle.inclusion_proof(tree, case["leafIdx"]) == _proof(case)
                checked += 1
    for _, case in _cases(vectors_dir, "consistency"):
        if not case["wantErr"] and 0 < case["size1"] < case["size2"] <= len(leaves):
            tree = leaves[: case["size2"]]
            if merkle.root_hash(tree) == _b(case["root2"]):
                assert merkle.consistency_proof(tree, case["size1"]) == _proof(case)
                checked += 1
    for _, case in _cases(vectors_dir, "subtreeconsistency"):
        if not case["wantErr"] and case["start"] < case["end"] <= case["size"] <= len(leaves):
            tree = leaves[: case["size"]]
            if merkle.root_hash(tree) == _b(case["root2"]):
                assert merkle.subtree_consistency_proof(tree, case["start"], case["end"]) == _proof(case)
                checked += 1
    assert checked >= 5
