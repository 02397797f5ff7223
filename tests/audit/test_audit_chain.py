"""Checkpoints anchored on a real (local, in-process py-evm) EVM chain, and offline anchor proofs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from web3 import Web3
from web3.exceptions import ContractLogicError

from iotguard.audit import AuditEvent, CheckpointSchedule, EventType, MemoryLogStore, NoteSigner, TransparencyLog
from iotguard.audit.chain import (
    AnchorProof,
    log_id,
    verify_anchor_proof,
    verify_consistent_with_anchor,
    verify_receipt_proof,
)
from iotguard.audit.note import open_checkpoint
from iotguard.errors import MalformedError, ProofError, StorageError
from iotguard.hub.chain_anchor import (
    ChainAnchor,
    anchor_contract_artifact,
    deploy_checkpoint_anchor,
    export_anchor_proof,
)
from iotguard.keys.keystore import KeyKind
from iotguard.keys.software import SoftwareKeyStore
from tests.audit.evm_rpc import evm_chain, evm_rpc

T0 = datetime(2026, 7, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def chain() -> Iterator[tuple[Web3, str, str]]:
    """A fresh local chain over HTTP JSON-RPC, the contract deployed on it."""
    with evm_rpc() as url:
        web3 = Web3(Web3.HTTPProvider(url))
        sender = web3.eth.accounts[0]
        yield web3, deploy_checkpoint_anchor(web3, sender), sender


def make_log(tmp_path: Path, name: str = "hub", keys_dir: str | None = None) -> TransparencyLog:
    keys = SoftwareKeyStore(tmp_path / (keys_dir or name))
    if not keys.has_key("k"):
        keys.generate("k", KeyKind.ED25519)
    return TransparencyLog(MemoryLogStore(), NoteSigner(keys, "k", "iotguard.test/audit"))


def grow(log: TransparencyLog, n: int, tag: str = "dev") -> str:
    log.record_many([AuditEvent(EventType.DEVICE_QUARANTINED, T0, "op", f"{tag}-{i}") for i in range(n)])
    return log.publish_checkpoint(T0)


def test_artifact_is_built_from_the_committed_source() -> None:
    art = anchor_contract_artifact()
    source = (REPO / "contracts" / "CheckpointAnchor.sol").read_bytes()
    assert art["sourceSha256"] == hashlib.sha256(source).hexdigest()
    assert art["compiler"]["version"].startswith("0.8.28+")
    assert {f["name"] for f in art["abi"] if f["type"] == "function"} >= {"anchor", "anchorBatch", "latestHead"}


def test_artifact_rebuilds_byte_for_byte(tmp_path: Path) -> None:
    """The committed artifact is what the pinned compiler makes of the committed source."""
    solc = REPO / "contracts" / "node_modules" / "solc"
    node = shutil.which("node")
    if node is None or not solc.is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must install node and contracts/node_modules (npm ci) to check the artifact")
        pytest.skip("solc-js not installed (cd contracts && npm ci)")
    out = tmp_path / "CheckpointAnchor.json"
    subprocess.run([node, str(REPO / "contracts" / "build.js"), str(out)], check=True, capture_output=True)
    committed = REPO / "src" / "iotguard" / "hub" / "contracts" / "CheckpointAnchor.json"
    assert out.read_bytes() == committed.read_bytes()


def test_anchors_land_on_chain_and_verify(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    web3, contract, sender = chain
    log = make_log(tmp_path)
    anchor = ChainAnchor(web3, contract, sender, batch_size=1)
    note = grow(log, 5)
    receipt = anchor.anchor(note, T0)
    assert receipt.reference.startswith("0x") and anchor.pending == 0
    anchor.verify(receipt, note)
    size, root, block = anchor.latest_head("iotguard.test/audit")
    assert (size, root) == (5, log.root_hash(5)) and block >= 1
    assert anchor.batches[0].gas_used > 21000


def test_batching_sends_one_transaction_per_n_checkpoints(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    web3, contract, sender = chain
    log = make_log(tmp_path)
    anchor = ChainAnchor(web3, contract, sender, batch_size=4, max_delay=timedelta(hours=1))
    receipts = [anchor.anchor(grow(log, 1, f"b{i}"), T0) for i in range(8)]
    assert [r.reference == "pending" for r in receipts] == [True, True, True, False] * 2
    assert len(anchor.batches) == 2 and anchor.batches[0].sizes == (1, 2, 3, 4)
    for i, r in enumerate(receipts):
        anchor.verify(r, log.checkpoint_at(i + 1) or "")
    # The interval also flushes: one old checkpoint goes out alone.
    late = anchor.anchor(grow(log, 1, "late"), T0)
    assert late.reference == "pending"
    assert anchor.anchor(grow(log, 1, "later"), T0 + timedelta(hours=2)).reference.startswith("0x")
    assert anchor.batches[-1].sizes == (9, 10)


def test_batching_cuts_gas_per_checkpoint(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    web3, contract, sender = chain
    log = make_log(tmp_path)
    single = ChainAnchor(web3, contract, sender, batch_size=1)
    for i in range(3):
        single.anchor(grow(log, 1, f"s{i}"), T0)
    batched = ChainAnchor(web3, contract, sender, batch_size=128)
    for i in range(128):
        batched.anchor(grow(log, 1, f"m{i}"), T0)
    per_single = single.batches[-1].gas_used  # steady state (the first one creates storage)
    per_batched = batched.batches[0].gas_used / 128
    assert per_batched <= per_single / 10, (per_batched, per_single)


def test_contract_rejects_a_smaller_tree_size(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    """Check for a rollback attack: the chain refuses to go back to an older size."""
    web3, contract, sender = chain
    log = make_log(tmp_path)
    ChainAnchor(web3, contract, sender, batch_size=1).anchor(grow(log, 10), T0)
    c = web3.eth.contract(address=Web3.to_checksum_address(contract), abi=anchor_contract_artifact()["abi"])
    lid = log_id("iotguard.test/audit")
    for size in (9, 10):
        with pytest.raises(ContractLogicError):
            c.functions.anchor(lid, size, b"\x01" * 32).transact({"from": sender})
    with pytest.raises(ContractLogicError):
        c.functions.anchorBatch(lid, [11, 11], [b"\x01" * 32] * 2).transact({"from": sender})
    assert c.functions.latestHead(lid).call()[0] == 10


def test_only_the_submitter_may_anchor(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    """Check for a denial of anchoring: a stranger cannot anchor a huge size under our log id."""
    web3, contract, _ = chain
    stranger = web3.eth.accounts[1]
    c = web3.eth.contract(address=Web3.to_checksum_address(contract), abi=anchor_contract_artifact()["abi"])
    with pytest.raises(ContractLogicError):
        c.functions.anchor(log_id("iotguard.test/audit"), 2**64 - 1, b"\x01" * 32).transact({"from": stranger})
    with pytest.raises(StorageError):
        ChainAnchor(web3, contract, stranger, batch_size=1).anchor(grow(make_log(tmp_path), 1), T0)


def test_retry_does_not_anchor_twice(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    web3, contract, sender = chain
    log = make_log(tmp_path)
    first = ChainAnchor(web3, contract, sender, batch_size=2)
    first.anchor(grow(log, 1), T0)
    first.anchor(grow(log, 1, "x"), T0)
    # A restarted hub queues the same checkpoints again: nothing is sent, nothing reverts.
    again = ChainAnchor(web3, contract, sender, batch_size=2)
    again.anchor(log.checkpoint_at(1) or "", T0)
    assert again.anchor(log.checkpoint_at(2) or "", T0).reference == "pending"
    assert again.batches == [] and again.pending == 0


def test_exported_proof_verifies_offline(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    web3, contract, sender = chain
    log = make_log(tmp_path)
    anchor = ChainAnchor(web3, contract, sender, batch_size=3)
    for i in range(3):
        anchor.anchor(grow(log, 2, f"p{i}"), T0)
    note = log.checkpoint_at(4) or ""
    text = export_anchor_proof(web3, contract, note).to_json()
    proof = AnchorProof.from_json(text)
    anchored = verify_anchor_proof(proof, log.verifier, contract=contract, chain_id=web3.eth.chain_id)
    assert anchored.checkpoint.size == 4 and anchored.block_number == anchor.batches[0].block_number
    assert anchored.block_hash == bytes(web3.eth.get_block(anchored.block_number)["hash"])
    current = grow(log, 3, "later")
    verify_consistent_with_anchor(anchored.checkpoint, current, log.verifier, log.consistency_proof(4, 9))


def test_rewritten_log_fails_verification_against_the_chain(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    """Check for a history rewrite: same size, another root, same signing key."""
    web3, contract, sender = chain
    honest = make_log(tmp_path, "honest", keys_dir="key")
    anchor = ChainAnchor(web3, contract, sender, batch_size=1)
    note = grow(honest, 6)
    receipt = anchor.anchor(note, T0)
    anchored = verify_anchor_proof(
        AnchorProof.from_json(export_anchor_proof(web3, contract, note).to_json()), honest.verifier
    )
    forged = make_log(tmp_path, "forged", keys_dir="key")  # the operator rewrites with its own key
    forged_note = grow(forged, 6, "other")
    forged_cp, _ = open_checkpoint(forged_note, honest.verifier)
    assert forged_cp.size == 6 and forged_cp.root != anchored.checkpoint.root
    with pytest.raises(ProofError, match="rewritten"):
        anchor.verify(receipt.__class__(receipt.anchor, forged_cp.origin, 6, forged_cp.root, "x"), forged_note)
    with pytest.raises(ProofError, match="rewritten"):
        verify_consistent_with_anchor(anchored.checkpoint, forged_note, honest.verifier, [])
    longer = grow(forged, 4, "more")
    with pytest.raises(ProofError, match="rewritten"):
        verify_consistent_with_anchor(anchored.checkpoint, longer, honest.verifier, forged.consistency_proof(6, 10))
    with pytest.raises(ProofError):
        export_anchor_proof(web3, contract, forged_note)


def test_tampered_proofs_are_rejected(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    web3, contract, sender = chain
    log = make_log(tmp_path)
    ChainAnchor(web3, contract, sender, batch_size=1).anchor(grow(log, 3), T0)
    good = export_anchor_proof(web3, contract, log.checkpoint_at(3) or "")
    verify_anchor_proof(good, log.verifier)
    raw = json.loads(good.to_json())

    def variant(**changes: object) -> AnchorProof:
        return AnchorProof.from_json(json.dumps({**raw, **changes}))

    header = bytearray(good.header_rlp)
    header[-5] ^= 1
    receipt = bytearray(good.receipt)
    receipt[-1] ^= 1
    other = grow(make_log(tmp_path, "other"), 3)
    for bad in (
        variant(header_rlp="0x" + header.hex()),
        variant(receipt="0x" + receipt.hex()),
        variant(tx_index=1),
        variant(block_number=good.block_number + 1),
        variant(checkpoint=log.checkpoint_at(2) or ""),
        variant(checkpoint=other),
        variant(receipt_proof=["0x" + (b"\x00" * 40).hex()]),
    ):
        with pytest.raises((ProofError, MalformedError)):
            verify_anchor_proof(bad, log.verifier)
    with pytest.raises(ProofError, match="another contract"):
        verify_anchor_proof(good, log.verifier, contract="0x" + "11" * 20)
    with pytest.raises(ProofError, match="another chain"):
        verify_anchor_proof(good, log.verifier, chain_id=good.chain_id + 1)
    junks = ("{}", "[]", "x" * 10, json.dumps({**raw, "tx_hash": "0x12"}), json.dumps({**raw, "receipt_proof": []}))
    for junk in junks:
        with pytest.raises(MalformedError):
            AnchorProof.from_json(junk)
    with pytest.raises(MalformedError):
        AnchorProof.from_json(" " * (1 << 21))
    with pytest.raises(ProofError):
        verify_receipt_proof(b"\x00" * 32, 0, good.receipt_proof)


def test_schedule_anchors_on_chain(tmp_path: Path, chain: tuple[Web3, str, str]) -> None:
    web3, contract, sender = chain
    log = make_log(tmp_path)
    anchor = ChainAnchor(web3, contract, sender, batch_size=2)
    schedule = CheckpointSchedule(log, timedelta(minutes=1), [anchor])
    for i in range(4):
        grow(log, 1, f"t{i}")
        result = schedule.tick(T0 + timedelta(minutes=i))
        assert result.checkpoint is not None and not result.failures
    assert [b.sizes for b in anchor.batches] == [(1, 2), (3, 4)]


def test_slow_chain_does_not_block_anchoring(tmp_path: Path) -> None:
    """A transaction not yet mined leaves the hub's loop free; later calls pick the receipt up."""
    with evm_chain() as (url, tester):
        web3 = Web3(Web3.HTTPProvider(url))
        sender = web3.eth.accounts[0]
        contract = deploy_checkpoint_anchor(web3, sender)
        tester.disable_auto_mine_transactions()
        log = make_log(tmp_path)
        anchor = ChainAnchor(web3, contract, sender, batch_size=1)
        first = anchor.anchor(grow(log, 2), T0)
        assert first.reference.startswith("sent:0x") and anchor.in_flight == 1 and anchor.batches == []
        # While it is in flight, newer checkpoints queue instead of racing it with a second transaction.
        assert anchor.anchor(grow(log, 1, "q"), T0).reference == "pending" and anchor.pending == 1
        tester.mine_blocks(1)
        assert anchor.anchor(grow(log, 1, "r"), T0).reference == "pending"  # polls at most once a second
        anchor.anchor(grow(log, 1, "s"), T0 + timedelta(seconds=2))  # picks up the receipt, sends 3..5 together
        assert anchor.batches[0].sizes == (2,) and anchor.in_flight == 3
        tester.mine_blocks(1)
        assert anchor.flush() is not None and anchor.batches[1].sizes == (3, 4, 5)
        anchor.verify(first, log.checkpoint_at(2) or "")
