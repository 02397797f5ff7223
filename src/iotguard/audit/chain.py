"""Checkpoints anchored on an EVM chain, and proofs of it an auditor checks offline.

The ``CheckpointAnchor`` contract (``contracts/CheckpointAnchor.sol``) keeps
the newest anchored head of each log and emits one
``CheckpointAnchored(bytes32 indexed logId, uint64 indexed size, bytes32 root)``
event per anchored checkpoint, where ``logId = keccak256(origin)``. It
rejects a size that does not exceed the last anchored one.

An :class:`AnchorProof` is self-contained: the signed checkpoint, the RLP
block header, the transaction receipt holding the event and the
Merkle-Patricia proof of that receipt under the header's ``receiptsRoot``.
:func:`verify_anchor_proof` checks all of it with no network: that the
header hashes to the block hash, that the receipt is in that block, that the
receipt succeeded and carries the event of the expected contract for exactly
this checkpoint. Whether that block hash is on the canonical chain is a
question for a chain endpoint (or any block explorer) and is asked once, by
block number, with :meth:`AnchoredCheckpoint.block_hash`.

This module does no I/O; the hub side (``iotguard.hub.chain_anchor``) talks
JSON-RPC.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from Crypto.Hash import keccak

from iotguard.audit.merkle import verify_consistency
from iotguard.audit.note import Checkpoint, NoteVerifier, open_checkpoint
from iotguard.errors import MalformedError, ProofError

__all__ = [
    "ANCHOR_PROOF_FORMAT",
    "EVENT_TOPIC",
    "MAX_ANCHOR_PROOF_BYTES",
    "AnchorProof",
    "AnchoredCheckpoint",
    "keccak256",
    "log_id",
    "verify_anchor_proof",
    "verify_consistent_with_anchor",
    "verify_receipt_proof",
]

#: ``format`` of an exported anchor proof.
ANCHOR_PROOF_FORMAT = "iotguard-anchor-proof/v1"
#: Largest anchor proof accepted (a receipt of a large batch is tens of KiB).
MAX_ANCHOR_PROOF_BYTES = 1 << 20
#: Most trie nodes in a receipt proof (a trie keyed by a transaction index is shallow).
MAX_PROOF_NODES = 16
_MAX_HEADER_BYTES = 4096


def keccak256(data: bytes) -> bytes:
    """Ethereum's Keccak-256 (not SHA3-256)."""
    return keccak.new(digest_bits=256, data=data).digest()


#: Topic 0 of the contract's ``CheckpointAnchored`` event.
EVENT_TOPIC = keccak256(b"CheckpointAnchored(bytes32,uint64,bytes32)")


def log_id(origin: str) -> bytes:
    """The contract's key for a log: ``keccak256(origin)``."""
    return keccak256(origin.encode())


def _nibbles(key: bytes) -> list[int]:
    out: list[int] = []
    for b in key:
        out += [b >> 4, b & 0x0F]
    return out


def _hex_prefix(encoded: bytes) -> tuple[list[int], bool]:
    if not encoded:
        raise ProofError("empty trie node path")
    flag = encoded[0] >> 4
    if flag > 3:
        raise ProofError("bad trie node path flag")
    nibbles = _nibbles(encoded)
    return (nibbles[1:] if flag & 1 else nibbles[2:]), bool(flag & 2)


def _rlp() -> Any:
    """The ``rlp`` module, imported on first use: it pulls in eth_utils (about half a CPU-second), which every
    hub, agent and CLI process would otherwise pay at start-up for a check only chain anchors need."""
    import rlp  # type: ignore[import-untyped]

    return rlp


def _decode(raw: bytes, what: str) -> Any:
    rlp = _rlp()
    try:
        return rlp.decode(raw, strict=True)
    except rlp.exceptions.DecodingError:
        raise ProofError(f"{what} is not valid RLP") from None


def verify_receipt_proof(receipts_root: bytes, tx_index: int, proof: Sequence[bytes]) -> bytes:
    """Walk a Merkle-Patricia proof of the receipt at ``tx_index``.

    Returns:
        The receipt as stored in the trie (EIP-2718 typed or legacy RLP).

    Raises:
        ProofError: the proof does not lead from ``receipts_root`` to a receipt.
    """
    if len(proof) > MAX_PROOF_NODES:
        raise ProofError("receipt proof is too long")
    nodes = {keccak256(n): n for n in proof}
    path = _nibbles(_rlp().encode(tx_index))
    ref: Any = receipts_root
    at = 0
    for _ in range(len(proof) + 1):
        if isinstance(ref, bytes):
            if len(ref) != 32 or ref not in nodes:
                raise ProofError("receipt proof is missing a trie node")
            node = _decode(nodes[ref], "trie node")
        else:
            node = ref
        if not isinstance(node, list):
            raise ProofError("trie node is not a list")
        if len(node) == 17:
            if at == len(path):
                value = node[16]
                if not value:
                    raise ProofError("no receipt at this index")
                return bytes(value)
            ref = node[path[at]]
            at += 1
            if ref == b"":
                raise ProofError("no receipt at this index")
        elif len(node) == 2:
            part, is_leaf = _hex_prefix(node[0])
            if path[at : at + len(part)] != part:
                raise ProofError("receipt proof is for another index")
            at += len(part)
            if is_leaf:
                if at != len(path) or not isinstance(node[1], bytes):
                    raise ProofError("receipt proof is for another index")
                return bytes(node[1])
            ref = node[1]
        else:
            raise ProofError("malformed trie node")
    raise ProofError("receipt proof does not end in a receipt")


def _receipt_fields(receipt: bytes) -> list[Any]:
    if not receipt:
        raise ProofError("empty receipt")
    body = receipt[1:] if receipt[0] < 0x7F else receipt
    fields = _decode(body, "receipt")
    if not isinstance(fields, list) or len(fields) != 4 or not isinstance(fields[3], list):
        raise ProofError("receipt is not [status, gas, bloom, logs]")
    return fields


def _uint(raw: Any, what: str) -> int:
    if not isinstance(raw, bytes) or len(raw) > 32 or raw[:1] == b"\x00":
        raise ProofError(f"{what} is not a canonical integer")
    return int.from_bytes(raw, "big")


@dataclass(frozen=True)
class AnchoredCheckpoint:
    """A checkpoint proven to be anchored in one block of one chain."""

    checkpoint: Checkpoint
    chain_id: int
    contract: str
    block_number: int
    block_hash: bytes
    block_timestamp: int
    tx_hash: bytes


def _hex(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise MalformedError(f"{what} must be a 0x hex string")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise MalformedError(f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise MalformedError(f"{what} must be {size} bytes")
    return raw


def _int_field(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise MalformedError(f"{what} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class AnchorProof:
    """Everything needed to check offline that a checkpoint was anchored."""

    checkpoint: str
    chain_id: int
    contract: str
    tx_hash: bytes
    tx_index: int
    block_number: int
    block_hash: bytes
    header_rlp: bytes
    receipt: bytes
    receipt_proof: tuple[bytes, ...]

    def to_json(self) -> str:
        """Serialise (hex strings with ``0x``)."""
        return json.dumps(
            {
                "format": ANCHOR_PROOF_FORMAT,
                "checkpoint": self.checkpoint,
                "chain_id": self.chain_id,
                "contract": self.contract,
                "tx_hash": "0x" + self.tx_hash.hex(),
                "tx_index": self.tx_index,
                "block_number": self.block_number,
                "block_hash": "0x" + self.block_hash.hex(),
                "header_rlp": "0x" + self.header_rlp.hex(),
                "receipt": "0x" + self.receipt.hex(),
                "receipt_proof": ["0x" + n.hex() for n in self.receipt_proof],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> AnchorProof:
        """Parse an exported proof strictly.

        Raises:
            MalformedError: too large, wrong format or a malformed field.
        """
        if len(text) > MAX_ANCHOR_PROOF_BYTES:
            raise MalformedError("anchor proof is too large")
        try:
            raw = json.loads(text)
        except ValueError:
            raise MalformedError("anchor proof is not JSON") from None
        if not isinstance(raw, dict) or raw.get("format") != ANCHOR_PROOF_FORMAT:
            raise MalformedError("not an anchor proof")
        nodes = raw.get("receipt_proof")
        if not isinstance(nodes, list) or not 0 < len(nodes) <= MAX_PROOF_NODES:
            raise MalformedError("receipt_proof must be a short non-empty list")
        checkpoint = raw.get("checkpoint")
        contract = raw.get("contract")
        if not isinstance(checkpoint, str) or not isinstance(contract, str):
            raise MalformedError("checkpoint and contract must be strings")
        _hex(contract, "contract", 20)
        header = _hex(raw.get("header_rlp"), "header_rlp")
        if len(header) > _MAX_HEADER_BYTES:
            raise MalformedError("header is too large")
        return cls(
            checkpoint=checkpoint,
            chain_id=_int_field(raw.get("chain_id"), "chain_id"),
            contract=contract,
            tx_hash=_hex(raw.get("tx_hash"), "tx_hash", 32),
            tx_index=_int_field(raw.get("tx_index"), "tx_index"),
            block_number=_int_field(raw.get("block_number"), "block_number"),
            block_hash=_hex(raw.get("block_hash"), "block_hash", 32),
            header_rlp=header,
            receipt=_hex(raw.get("receipt"), "receipt"),
            receipt_proof=tuple(_hex(n, "receipt_proof node") for n in nodes),
        )


def verify_anchor_proof(
    proof: AnchorProof, log_key: NoteVerifier, *, contract: str | None = None, chain_id: int | None = None
) -> AnchoredCheckpoint:
    """Check offline that the proof's checkpoint is anchored in the proof's block.

    Args:
        proof: The exported proof.
        log_key: The log's verifier key (the checkpoint must carry its signature).
        contract: The anchor contract the auditor trusts (default: the proof's own).
        chain_id: The chain the auditor expects (default: the proof's own).

    Returns:
        What was proven; compare ``block_hash`` with the chain once to trust it.

    Raises:
        ProofError: any link of the chain of hashes fails, or the receipt does
            not carry this checkpoint's event from the expected contract.
    """
    cp, _ = open_checkpoint(proof.checkpoint, log_key)
    if contract is not None and contract.lower() != proof.contract.lower():
        raise ProofError("checkpoint was anchored by another contract")
    if chain_id is not None and chain_id != proof.chain_id:
        raise ProofError("checkpoint was anchored on another chain")
    if keccak256(proof.header_rlp) != proof.block_hash:
        raise ProofError("block header does not hash to the block hash")
    header = _decode(proof.header_rlp, "block header")
    if not isinstance(header, list) or len(header) < 15:
        raise ProofError("block header has too few fields")
    if _uint(header[8], "block number") != proof.block_number:
        raise ProofError("block header is for another block number")
    receipts_root = header[5]
    if not isinstance(receipts_root, bytes) or len(receipts_root) != 32:
        raise ProofError("block header has no receipts root")
    if verify_receipt_proof(receipts_root, proof.tx_index, proof.receipt_proof) != proof.receipt:
        raise ProofError("receipt is not the one proven in the block")
    status, _, _, logs = _receipt_fields(proof.receipt)
    if status != b"\x01":
        raise ProofError("anchoring transaction failed")
    address = _hex(proof.contract, "contract", 20)
    want = [EVENT_TOPIC, log_id(cp.origin), cp.size.to_bytes(32, "big")]
    for entry in logs:
        if (
            isinstance(entry, list)
            and len(entry) == 3
            and entry[0] == address
            and entry[1] == want
            and entry[2] == cp.root
        ):
            return AnchoredCheckpoint(
                cp,
                proof.chain_id,
                proof.contract,
                proof.block_number,
                proof.block_hash,
                _uint(header[11], "timestamp"),
                proof.tx_hash,
            )
    raise ProofError("receipt does not anchor this checkpoint")


def verify_consistent_with_anchor(
    anchored: Checkpoint, current: str, log_key: NoteVerifier, proof: Sequence[bytes]
) -> Checkpoint:
    """Check the log's current checkpoint extends an anchored one.

    Args:
        anchored: The checkpoint proven on chain.
        current: The log's current signed checkpoint.
        log_key: The log's verifier key.
        proof: Consistency proof from ``anchored.size`` to the current size.

    Returns:
        The current checkpoint.

    Raises:
        ProofError: another log, a smaller tree, another root at the same
            size, or a failing consistency proof (the log was rewritten).
    """
    cur, _ = open_checkpoint(current, log_key)
    if cur.origin != anchored.origin:
        raise ProofError("current checkpoint is of another log")
    if cur.size < anchored.size:
        raise ProofError("current log is smaller than its anchored checkpoint")
    if cur.size == anchored.size:
        if cur.root != anchored.root:
            raise ProofError("log rewritten: another root for the anchored size")
        return cur
    try:
        verify_consistency(anchored.size, cur.size, anchored.root, cur.root, proof)
    except ProofError as exc:
        raise ProofError(f"log rewritten: not consistent with the anchored checkpoint ({exc})") from None
    return cur
