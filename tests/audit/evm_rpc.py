"""A local EVM chain (py-evm through eth-tester) served over real HTTP JSON-RPC on loopback.

The code under test talks to it exactly as to any public endpoint
(``Web3.HTTPProvider``); reverts come back as JSON-RPC errors the way
geth and other nodes report them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_tester import EthereumTester
from eth_tester.exceptions import TransactionFailed
from web3 import EthereumTesterProvider, Web3


class _Handler(BaseHTTPRequestHandler):
    call: Callable[[str, Any], Any]
    extra_data: Callable[[str], str]
    lock: threading.Lock

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        requests = body if isinstance(body, list) else [body]
        answers = []
        for req in requests:
            with self.lock:
                try:
                    out = type(self).call(req["method"], req.get("params", []))
                    answer = {"jsonrpc": "2.0", "id": req.get("id")}
                    answer.update({k: _wire(v) for k, v in out.items() if k in ("result", "error")})
                    if req["method"].startswith("eth_getBlockBy") and isinstance(answer.get("result"), dict):
                        answer["result"]["extraData"] = "0x" + type(self).extra_data(answer["result"]["number"])
                except TransactionFailed:
                    error = {"code": 3, "message": "execution reverted"}
                    answer = {"jsonrpc": "2.0", "id": req.get("id"), "error": error}
            answers.append(answer)
        data = json.dumps(answers if isinstance(body, list) else answers[0]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _wire(value: Any) -> Any:
    """Python values (as web3's eth-tester formatters produce them) back to JSON-RPC form."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Mapping):
        return {k: _wire(v) for k, v in value.items()}
    return [_wire(v) for v in value]


@contextmanager
def evm_rpc() -> Iterator[str]:
    """Start a fresh chain; yield its JSON-RPC URL."""
    with evm_chain() as (url, _):
        yield url


@contextmanager
def evm_chain(block_time: float | None = None) -> Iterator[tuple[str, EthereumTester]]:
    """Start a fresh chain; yield its JSON-RPC URL and the tester (to stop and start mining).

    Args:
        block_time: Mine a block every this many seconds, like a real chain
            (transactions wait in the pool); ``None`` mines each transaction
            as it is sent.
    """
    w3 = Web3(EthereumTesterProvider())
    call = w3.provider.request_func(w3, w3.middleware_onion)
    chain = w3.provider.ethereum_tester.backend.chain

    def extra_data(number: str) -> str:
        # eth-tester reports 32 zero bytes where py-evm's header holds none; a node reports the header.
        return bytes(chain.get_canonical_block_header_by_number(int(number, 16)).extra_data).hex()

    lock = threading.Lock()
    handler = type(
        "Handler",
        (_Handler,),
        {"call": staticmethod(call), "extra_data": staticmethod(extra_data), "lock": lock},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stop = threading.Event()
    if block_time is not None:
        tester = w3.provider.ethereum_tester
        tester.disable_auto_mine_transactions()

        def mine() -> None:
            while not stop.wait(block_time):
                with lock:
                    tester.mine_blocks(1)

        threading.Thread(target=mine, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", w3.provider.ethereum_tester
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
