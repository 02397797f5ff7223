"""``iotguard audit anchor-deploy|anchor-submit|anchor-proof`` and the anchor-proof check of ``audit verify``.

The chain endpoint, contract and sender come from the options or from the
hub config (``hub.chain_rpc_url``, ``hub.chain_contract``,
``hub.chain_sender``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotguard.audit.chain import AnchorProof, verify_anchor_proof, verify_consistent_with_anchor
from iotguard.audit.note import NoteVerifier
from iotguard.errors import ConfigError, MalformedError, ProofError

__all__ = ["register_chain", "verify_anchor_proof_file"]


def _web3(url: str) -> Any:
    from web3 import Web3

    return Web3(Web3.HTTPProvider(url))


def _chain_settings(args: argparse.Namespace) -> tuple[str, str, str]:
    from iotguard.config import load_config

    hub = load_config(getattr(args, "config", None)).hub
    rpc = args.rpc or hub.chain_rpc_url
    contract = getattr(args, "contract", None) or hub.chain_contract
    sender = getattr(args, "sender", None) or hub.chain_sender
    if not rpc:
        raise ConfigError("no chain endpoint: pass --rpc or set hub.chain_rpc_url")
    return rpc, contract, sender


def _cmd_deploy(args: argparse.Namespace) -> int:
    from iotguard.hub.chain_anchor import deploy_checkpoint_anchor

    rpc, _, sender = _chain_settings(args)
    if not sender:
        raise ConfigError("no sender: pass --sender or set hub.chain_sender")
    print(deploy_checkpoint_anchor(_web3(rpc), sender))
    return 0


def _cmd_submit(args: argparse.Namespace, open_log: Callable[..., Any]) -> int:
    from iotguard.hub.chain_anchor import ChainAnchor

    rpc, contract, sender = _chain_settings(args)
    if not contract or not sender:
        raise ConfigError("chain anchoring needs a contract and a sender")
    log = open_log(args, signer=True)
    note = log.publish_checkpoint(datetime.now(tz=UTC))
    anchor = ChainAnchor(_web3(rpc), contract, sender, batch_size=1)
    receipt = anchor.anchor(note, datetime.now(tz=UTC))
    if anchor.in_flight:
        anchor.flush(wait=args.wait)
        receipt = replace(receipt, reference="0x" + anchor.batches[-1].tx_hash.hex()) if anchor.batches else receipt
    if args.output:
        Path(args.output).write_text(note)
    gas = anchor.batches[-1].gas_used if anchor.batches else 0
    print(json.dumps({"size": receipt.size, "tx": receipt.reference, "gas": gas, "anchor": receipt.anchor}))
    return 0


def _cmd_proof(args: argparse.Namespace) -> int:
    from iotguard.hub.chain_anchor import export_anchor_proof

    rpc, contract, _ = _chain_settings(args)
    if not contract:
        raise ConfigError("no contract: pass --contract or set hub.chain_contract")
    proof = export_anchor_proof(_web3(rpc), contract, Path(args.checkpoint).read_text(), from_block=args.from_block)
    text = proof.to_json()
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0


def verify_anchor_proof_file(args: argparse.Namespace, raw: bytes, key: NoteVerifier) -> int:
    """``audit verify`` of an anchor proof: offline, then against the chain when ``--rpc`` is given.

    Raises:
        ProofError: the proof, the chain or the consistency proof disagrees.
    """
    proof = AnchorProof.from_json(raw)
    anchored = verify_anchor_proof(proof, key, contract=args.contract, chain_id=args.chain_id)
    cp = anchored.checkpoint
    print(
        f"OK: checkpoint {cp.origin} size {cp.size} anchored by {anchored.contract} on chain "
        f"{anchored.chain_id} in block {anchored.block_number} (0x{anchored.block_hash.hex()})"
    )
    if args.rpc:
        web3 = _web3(args.rpc)
        if int(web3.eth.chain_id) != anchored.chain_id:
            raise ProofError("the endpoint serves another chain")
        block = web3.eth.get_block(anchored.block_number)
        if bytes(block["hash"]) != anchored.block_hash:
            raise ProofError("the anchoring block is not on the endpoint's canonical chain")
        print(f"OK: block {anchored.block_number} is on the chain served by {args.rpc}")
    if args.consistency:
        body = json.loads(Path(args.consistency).read_text())
        if not isinstance(body, dict) or body.get("old_size") != cp.size:
            raise MalformedError("consistency proof must start at the anchored size")
        current = body.get("new_checkpoint")
        if not isinstance(current, str):
            raise MalformedError("consistency proof has no new checkpoint")
        try:
            hashes = [bytes.fromhex(h) for h in body.get("proof", [])]
        except (TypeError, ValueError):
            raise MalformedError("consistency proof is not hex") from None
        now = verify_consistent_with_anchor(cp, current, key, hashes)
        print(f"OK: the log at size {now.size} is consistent with the anchored checkpoint")
    return 0


def add_verify_options(p: argparse.ArgumentParser) -> None:
    """Options of ``audit verify`` for anchor proofs."""
    p.add_argument("--contract", help="anchor proofs: the anchor contract address you trust")
    p.add_argument("--chain-id", type=int, help="anchor proofs: the chain id you expect")
    p.add_argument("--rpc", help="anchor proofs: also check the block against this chain endpoint")
    p.add_argument(
        "--consistency", metavar="FILE", help="anchor proofs: 'audit proof consistency' from the anchored size"
    )


def register_chain(sub: Any, add_log_options: Callable[[argparse.ArgumentParser], None],
                   open_log: Callable[..., Any]) -> None:
    """Add the chain-anchoring actions to the ``audit`` group."""
    p = sub.add_parser("anchor-deploy", help="deploy the CheckpointAnchor contract; print its address")
    p.add_argument("--config", metavar="PATH")
    p.add_argument("--rpc", help="EVM JSON-RPC endpoint (default hub.chain_rpc_url)")
    p.add_argument("--sender", help="node-managed account to deploy from (default hub.chain_sender)")
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("anchor-submit", help="publish a checkpoint and anchor it on chain now")
    add_log_options(p)
    p.add_argument("--rpc")
    p.add_argument("--contract")
    p.add_argument("--sender")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the transaction to be mined")
    p.add_argument("-o", "--output", help="write the anchored checkpoint to this file")
    p.set_defaults(func=lambda a: _cmd_submit(a, open_log))

    p = sub.add_parser("anchor-proof", help="export a self-contained proof that a checkpoint is anchored")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the checkpoint note file")
    p.add_argument("--config", metavar="PATH")
    p.add_argument("--rpc")
    p.add_argument("--contract")
    p.add_argument("--from-block", type=int, default=0, help="the contract's deployment block")
    p.add_argument("-o", "--output", help="write to this file")
    p.set_defaults(func=_cmd_proof)
