"""The hub's configuration turns on chain anchoring and required custody (composition root wiring)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from web3 import Web3

from iotguard.audit import AuditEvent, EventType
from iotguard.errors import ConfigError, EnrollmentError
from iotguard.hub.chain_anchor import ChainAnchor, deploy_checkpoint_anchor
from tests.audit.evm_rpc import evm_rpc
from tests.hub.conftest import make_hub


def test_config_turns_on_chain_anchoring_and_required_custody(tmp_path: Path) -> None:
    parties = tmp_path / "parties.json"
    parties.write_text(json.dumps([]))
    with evm_rpc() as url:
        web3 = Web3(Web3.HTTPProvider(url))
        sender = web3.eth.accounts[0]
        contract = deploy_checkpoint_anchor(web3, sender)
        hub = make_hub(tmp_path, custody_required=True, custody_parties_file=str(parties), chain_rpc_url=url,
                       chain_contract=contract, chain_sender=sender, chain_batch_size=1)
        try:
            with pytest.raises(EnrollmentError):  # no chain of custody for this device
                hub.agent("dev-1")
            hub.services.audit.log.record(AuditEvent(EventType.POLICY_CHANGED, datetime.now(UTC), "op", "hub"))
            result = hub.services.audit.checkpoints.publish_now(datetime.now(UTC))
            assert not result.failures and any(r.anchor.startswith("evm:") for r in result.receipts)
            size = hub.services.audit.log.size()
            assert ChainAnchor(web3, contract, sender).latest_head(hub.services.audit.log.origin)[0] == size
        finally:
            hub.store.engine.dispose()


def test_required_custody_without_parties_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        make_hub(tmp_path, custody_required=True)
    with pytest.raises(ConfigError):
        make_hub(tmp_path / "b", chain_rpc_url="http://127.0.0.1:9")
