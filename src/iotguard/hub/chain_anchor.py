"""The chain anchor: checkpoints committed to the ``CheckpointAnchor`` contract over JSON-RPC.

:class:`ChainAnchor` implements the :class:`~iotguard.audit.anchor.Anchor`
Protocol with web3.py against any EVM endpoint (a public chain, a consortium
chain, a local development chain). Anchoring is batched: checkpoints queue
until ``batch_size`` of them are waiting or the oldest has waited
``max_delay``, then go out in one ``anchorBatch`` transaction. Losing the
queue (a crash) loses nothing that matters: a later anchored checkpoint
commits to every earlier entry through the log's consistency proofs. A
retried batch drops the sizes the contract already holds, so a checkpoint is
never anchored twice.

:func:`export_anchor_proof` builds the self-contained
:class:`~iotguard.audit.chain.AnchorProof` (block header, receipt and its
Merkle-Patricia proof) an auditor verifies offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import rlp  # type: ignore[import-untyped]
from eth_bloom.bloom import BloomFilter
from hexbytes import HexBytes
from trie.hexary import HexaryTrie
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3Exception

from iotguard.audit.anchor import AnchorReceipt
from iotguard.audit.chain import EVENT_TOPIC, AnchorProof, keccak256, log_id
from iotguard.audit.note import Checkpoint, parse_note
from iotguard.config import HubConfig
from iotguard.errors import ConfigError, ProofError, StorageError

__all__ = [
    "AnchorBatch",
    "ChainAnchor",
    "anchor_contract_artifact",
    "chain_anchor_from_config",
    "deploy_checkpoint_anchor",
    "export_anchor_proof",
]

#: Most checkpoints in one ``anchorBatch`` transaction.
MAX_BATCH = 512
#: Header fields in consensus order; the optional tail is present from the fork that added it.
_HEADER_FIELDS = (
    "parentHash", "sha3Uncles", "miner", "stateRoot", "transactionsRoot", "receiptsRoot", "logsBloom",
    "difficulty", "number", "gasLimit", "gasUsed", "timestamp", "extraData", "mixHash", "nonce",
)
_HEADER_OPTIONAL = (
    "baseFeePerGas", "withdrawalsRoot", "blobGasUsed", "excessBlobGas", "parentBeaconBlockRoot", "requestsHash",
)

_QUANTITIES = frozenset(
    {"difficulty", "number", "gasLimit", "gasUsed", "timestamp", "baseFeePerGas", "blobGasUsed", "excessBlobGas"}
)


def anchor_contract_artifact() -> dict[str, Any]:
    """The compiled contract (ABI and bytecode) shipped with iotguard."""
    text = (resources.files("iotguard.hub") / "contracts" / "CheckpointAnchor.json").read_text()
    artifact: dict[str, Any] = json.loads(text)
    return artifact


def deploy_checkpoint_anchor(web3: Web3, sender: str) -> str:
    """Deploy the contract from ``sender`` (a node-managed account); return its address.

    Raises:
        StorageError: the deployment failed.
    """
    art = anchor_contract_artifact()
    factory = web3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    try:
        tx = factory.constructor().transact({"from": Web3.to_checksum_address(sender)})
        receipt = web3.eth.wait_for_transaction_receipt(tx)
    except (Web3Exception, OSError) as exc:
        raise StorageError(f"contract deployment failed: {type(exc).__name__}") from None
    address = receipt["contractAddress"]
    if receipt["status"] != 1 or address is None:
        raise StorageError("contract deployment reverted")
    return str(address)


def _checkpoint(note: str) -> Checkpoint:
    return Checkpoint.from_body(parse_note(note).text)


@dataclass(frozen=True)
class AnchorBatch:
    """One anchoring transaction."""

    tx_hash: bytes
    block_number: int
    gas_used: int
    sizes: tuple[int, ...]


@dataclass
class _Pending:
    origin: str
    since: datetime
    heads: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class _InFlight:
    tx_hash: bytes
    origin: str
    since: datetime
    heads: list[tuple[int, bytes]]
    sent_at: datetime

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(h[0] for h in self.heads)


class ChainAnchor:
    """Anchors checkpoints in the ``CheckpointAnchor`` contract.

    Args:
        web3: A connected client (``Web3(Web3.HTTPProvider(url))`` for any endpoint).
        contract: Address of the deployed contract.
        sender: The account the node signs with; it must be the contract's submitter.
        batch_size: Checkpoints per transaction (1 = one transaction each).
        max_delay: Longest a checkpoint waits for its batch to fill.
        from_block: Where event lookups start (the deployment block; public
            endpoints limit the block range of a log query).
        poll_interval: How often :meth:`anchor` asks whether a sent
            transaction was mined.

    Raises:
        ConfigError: a limit is out of range or the address is malformed.
    """

    def __init__(
        self,
        web3: Web3,
        contract: str,
        sender: str,
        *,
        batch_size: int = 128,
        max_delay: timedelta = timedelta(minutes=10),
        from_block: int = 0,
        poll_interval: timedelta = timedelta(seconds=1),
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ConfigError(f"chain batch size must be 1..{MAX_BATCH}")
        if max_delay < timedelta(0):
            raise ConfigError("chain anchoring delay must not be negative")
        if not Web3.is_address(contract) or not Web3.is_address(sender):
            raise ConfigError("chain contract and sender must be addresses")
        self._web3 = web3
        self._address = Web3.to_checksum_address(contract)
        self._sender = Web3.to_checksum_address(sender)
        self._contract = web3.eth.contract(address=self._address, abi=anchor_contract_artifact()["abi"])
        self._batch_size = batch_size
        self._max_delay = max_delay
        self._from_block = from_block
        self._pending: _Pending | None = None
        self._inflight: _InFlight | None = None
        #: Last size known anchored per origin (from the chain once, then from our own receipts).
        self._anchored: dict[str, int] = {}
        self._poll_interval = poll_interval
        self._chain_id: int | None = None
        self.batches: list[AnchorBatch] = []

    @property
    def name(self) -> str:
        return f"evm:{self.chain_id}:{self._address}"

    @property
    def chain_id(self) -> int:
        """The chain's id (asked once)."""
        if self._chain_id is None:
            self._chain_id = int(self._web3.eth.chain_id)
        return self._chain_id

    @property
    def pending(self) -> int:
        """Checkpoints queued for the next transaction."""
        return len(self._pending.heads) if self._pending else 0

    @property
    def in_flight(self) -> int:
        """Checkpoints in a sent transaction that is not mined yet."""
        return len(self._inflight.heads) if self._inflight else 0

    def anchor(self, checkpoint: str, now: datetime) -> AnchorReceipt:
        """Queue a checkpoint; send the batch when it is full or old enough.

        Never waits for a block: a sent transaction is checked (without
        blocking) on later calls, so a slow chain does not stall the hub's
        maintenance loop.

        Returns:
            A receipt whose reference is the mined transaction's hash,
            ``sent:<hash>`` while it is not mined yet, or ``pending``.

        Raises:
            StorageError: a transaction could not be sent, or reverted (its
                checkpoints are queued again).
        """
        cp = _checkpoint(checkpoint)
        self._poll(now)
        if self._pending is not None and self._pending.origin != cp.origin:
            self.flush(now=now)
        if self._pending is None:
            self._pending = _Pending(cp.origin, now)
        heads = self._pending.heads
        if not heads or cp.size > heads[-1][0]:
            heads.append((cp.size, cp.root))
        reference = "pending"
        if len(heads) >= self._batch_size or now - self._pending.since >= self._max_delay:
            batch = self.flush(now=now)
            if batch is not None and cp.size in batch.sizes:
                reference = "0x" + batch.tx_hash.hex()
            elif self._inflight is not None and cp.size in self._inflight.sizes:
                reference = "sent:0x" + self._inflight.tx_hash.hex()
        return AnchorReceipt(self.name, cp.origin, cp.size, cp.root, reference)

    def _poll(self, now: datetime | None = None) -> AnchorBatch | None:
        """Check the transaction in flight (at most once per ``poll_interval`` when ``now`` is given)."""
        inflight = self._inflight
        if inflight is None or (now is not None and now - inflight.sent_at < self._poll_interval):
            return None
        try:
            receipt = self._web3.eth.get_transaction_receipt(HexBytes(inflight.tx_hash))
        except TransactionNotFound:
            return None
        except (Web3Exception, OSError) as exc:
            raise StorageError(f"chain query failed: {type(exc).__name__}") from None
        self._inflight = None
        if receipt["status"] != 1:
            self._anchored.pop(inflight.origin, None)
            queued = self._pending.heads if self._pending is not None else []
            heads = [*inflight.heads, *(h for h in queued if h[0] > inflight.heads[-1][0])]
            self._pending = _Pending(inflight.origin, inflight.since, heads)
            raise StorageError("anchoring transaction reverted; its checkpoints are queued again")
        batch = AnchorBatch(inflight.tx_hash, int(receipt["blockNumber"]), int(receipt["gasUsed"]), inflight.sizes)
        self._anchored[inflight.origin] = inflight.heads[-1][0]
        self.batches.append(batch)
        return batch

    def flush(self, *, wait: float = 0.0, now: datetime | None = None) -> AnchorBatch | None:
        """Send every queued checkpoint in one transaction (unless one is still in flight).

        Args:
            wait: Seconds to wait for the transaction to be mined (0: do not wait).
            now: Sending time (default: the system clock).

        Returns:
            The batch that was confirmed during this call, if any.

        Raises:
            StorageError: the transaction could not be sent or reverted.
        """
        batch = self._poll(now)
        if self._inflight is None and self._pending is not None:
            self._send(self._pending, now or datetime.now(tz=UTC))
            batch = self._poll() or batch
        if self._inflight is not None and wait > 0:
            try:
                self._web3.eth.wait_for_transaction_receipt(HexBytes(self._inflight.tx_hash), timeout=wait)
            except (Web3Exception, OSError) as exc:
                raise StorageError(f"anchoring transaction not mined: {type(exc).__name__}") from None
            batch = self._poll() or batch
        return batch

    def _send(self, pending: _Pending, now: datetime) -> None:
        lid = log_id(pending.origin)
        try:
            last = self._anchored.get(pending.origin)
            if last is None:  # first send, or after a failure: ask the chain (a restarted hub re-queues)
                last = int(self._contract.functions.latestHead(lid).call()[0])
                self._anchored[pending.origin] = last
            heads = [h for h in pending.heads if h[0] > last]
            if not heads:
                self._pending = None
                return
            if len(heads) == 1:
                call = self._contract.functions.anchor(lid, heads[0][0], heads[0][1])
            else:
                call = self._contract.functions.anchorBatch(lid, [h[0] for h in heads], [h[1] for h in heads])
            tx = call.transact({"from": self._sender})
        except ContractLogicError as exc:
            self._anchored.pop(pending.origin, None)
            raise StorageError(f"anchor contract refused the batch: {exc.message}") from None
        except (Web3Exception, OSError) as exc:
            self._anchored.pop(pending.origin, None)
            raise StorageError(f"chain anchoring failed: {type(exc).__name__}") from None
        self._inflight = _InFlight(bytes(tx), pending.origin, pending.since, heads, now)
        self._pending = None

    def anchored_root(self, origin: str, size: int) -> tuple[bytes, dict[str, Any]] | None:
        """The root the chain holds for ``(origin, size)`` and its event, if anchored."""
        return _find_event(self._web3, self._address, origin, size, self._from_block)

    def verify(self, receipt: AnchorReceipt, checkpoint: str) -> None:
        """Check the chain holds exactly this checkpoint's root for its size.

        Raises:
            ProofError: not anchored, or the chain holds another root (the
                log was rewritten after anchoring).
        """
        cp = _checkpoint(checkpoint)
        if (receipt.origin, receipt.size, receipt.root) != (cp.origin, cp.size, cp.root):
            raise ProofError("receipt is for another checkpoint")
        found = self.anchored_root(cp.origin, cp.size)
        if found is None:
            raise ProofError("checkpoint is not anchored on chain")
        if found[0] != cp.root:
            raise ProofError("log rewritten: the chain holds another root for this size")

    def latest_head(self, origin: str) -> tuple[int, bytes, int]:
        """The newest head anchored for a log: size, root, block number."""
        size, root, block = self._contract.functions.latestHead(log_id(origin)).call()
        return int(size), bytes(root), int(block)


def _find_event(
    web3: Web3, address: str, origin: str, size: int, from_block: int
) -> tuple[bytes, dict[str, Any]] | None:
    topics: list[Any] = [
        "0x" + EVENT_TOPIC.hex(), "0x" + log_id(origin).hex(), "0x" + size.to_bytes(32, "big").hex(),
    ]
    try:
        found = web3.eth.get_logs(
            {"address": Web3.to_checksum_address(address), "fromBlock": from_block, "toBlock": "latest",
             "topics": topics}
        )
    except (Web3Exception, OSError) as exc:
        raise StorageError(f"chain query failed: {type(exc).__name__}") from None
    if not found:
        return None
    event: dict[str, Any] = dict(found[0])
    return bytes(event["data"]), event


def _receipt_bytes(receipt: Any) -> bytes:
    bloom = BloomFilter()
    logs: list[list[Any]] = []
    for e in receipt["logs"]:
        address = bytes.fromhex(str(e["address"])[2:])
        topics = [bytes(t) for t in e["topics"]]
        bloom.add(address)
        for t in topics:
            bloom.add(t)
        logs.append([address, topics, bytes(e["data"])])
    status = int(receipt["status"])
    body: bytes = rlp.encode([status, int(receipt["cumulativeGasUsed"]), int(bloom).to_bytes(256, "big"), logs])
    kind = int(receipt.get("type", 0) or 0)
    return bytes([kind]) + body if kind else body


def _header_rlp(block: Any) -> bytes:
    def field_value(name: str) -> Any:
        value = block[name]
        if name in _QUANTITIES:
            return int(value, 16) if isinstance(value, str) else int(value)
        if isinstance(value, int):
            return value.to_bytes(256 if name == "logsBloom" else 32, "big")
        if isinstance(value, str):
            digits = value[2:]
            raw = bytes.fromhex(digits.rjust(len(digits) + len(digits) % 2, "0"))
        else:
            raw = bytes(value)
        return raw.rjust(256, b"\0") if name == "logsBloom" else raw

    fields = [field_value(n) for n in _HEADER_FIELDS]
    for name in _HEADER_OPTIONAL:
        if name not in block or block[name] is None:
            break
        fields.append(field_value(name))
    return bytes(rlp.encode(fields))


def export_anchor_proof(web3: Web3, contract: str, checkpoint: str, *, from_block: int = 0) -> AnchorProof:
    """Build the offline proof that ``checkpoint`` is anchored.

    Raises:
        ProofError: the checkpoint is not anchored, or the endpoint's block and
            receipts do not reproduce the block hash / receipts root.
        StorageError: the endpoint could not be queried.
    """
    cp = _checkpoint(checkpoint)
    if not Web3.is_address(contract):
        raise ConfigError("chain contract must be an address")
    found = _find_event(web3, contract, cp.origin, cp.size, from_block)
    if found is None:
        raise ProofError("checkpoint is not anchored on chain")
    if found[0] != cp.root:
        raise ProofError("log rewritten: the chain holds another root for this size")
    event = found[1]
    try:
        block = web3.eth.get_block(event["blockNumber"], full_transactions=False)
        hashes: list[Any] = list(block["transactions"])
        receipts = [web3.eth.get_transaction_receipt(HexBytes(h)) for h in hashes]
    except (Web3Exception, OSError) as exc:
        raise StorageError(f"chain query failed: {type(exc).__name__}") from None
    header = _header_rlp(block)
    if keccak256(header) != bytes(block["hash"]):
        raise ProofError("endpoint's block header does not hash to its block hash")
    receipt_trie = HexaryTrie(db={})
    for i, r in enumerate(receipts):
        receipt_trie[rlp.encode(i)] = _receipt_bytes(r)
    if receipt_trie.root_hash != bytes(block["receiptsRoot"]):
        raise ProofError("endpoint's receipts do not match the block's receipts root")
    index = int(event["transactionIndex"])
    nodes = tuple(rlp.encode(n) for n in receipt_trie.get_proof(rlp.encode(index)))  # type: ignore[no-untyped-call]
    return AnchorProof(
        checkpoint=checkpoint,
        chain_id=int(web3.eth.chain_id),
        contract=Web3.to_checksum_address(contract),
        tx_hash=bytes(event["transactionHash"]),
        tx_index=index,
        block_number=int(block["number"]),
        block_hash=bytes(block["hash"]),
        header_rlp=header,
        receipt=_receipt_bytes(receipts[index]),
        receipt_proof=nodes,
    )


def chain_anchor_from_config(hub: HubConfig, web3: Web3 | None = None) -> ChainAnchor | None:
    """The configured chain anchor, or ``None`` when ``chain_rpc_url`` is empty.

    Raises:
        ConfigError: an endpoint is set without a contract and sender.
    """
    if not hub.chain_rpc_url:
        return None
    if not hub.chain_contract or not hub.chain_sender:
        raise ConfigError("chain anchoring needs hub.chain_contract and hub.chain_sender")
    return ChainAnchor(
        web3 or Web3(Web3.HTTPProvider(hub.chain_rpc_url)),
        hub.chain_contract,
        hub.chain_sender,
        batch_size=hub.chain_batch_size,
        max_delay=timedelta(seconds=hub.chain_max_delay_s),
        from_block=hub.chain_from_block,
    )
