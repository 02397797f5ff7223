"""Homomorphic-sum rounds over the device plane: devices send Ring-LWE ciphertexts, in parts, in signed
``aggregate`` requests; the hub adds them and applies only its key share; the independent decryptor's
share opens the exact sum; the hub never holds a value; malformed parts are refused with a reason; a
device that restarts mid-upload never mixes two encryptions."""

from __future__ import annotations

import base64
import random
from datetime import timedelta
from typing import Any

import cbor2
import numpy as np
import pytest

from iotguard.agent.secagg import AGGREGATE_PATH, HeClient
from iotguard.analytics.he_round import open_result
from iotguard.analytics.rlwe import PRIMES, RlweParams, keygen_share
from iotguard.errors import EnrollmentError, MalformedError
from iotguard.identity import VerifiedRequest
from tests.analytics.test_secagg_rounds import Later, _refusals
from tests.hub.conftest import HubParts

DIMS = 60
PARAMS = RlweParams(16, 16)


def _decryptor() -> tuple[Any, dict[str, Any]]:
    seed = bytes(random.Random(3).randrange(256) for _ in range(32))
    share, part = keygen_share("decryptor", seed)
    return share, {"seed": seed.hex(), "decryptor_part": base64.b64encode(part.astype("<u4").tobytes()).decode()}


def test_an_he_round_over_the_device_plane_opens_only_with_both_shares(hub: HubParts) -> None:
    decryptor, key = _decryptor()
    agents = {f"he-{i}": hub.agent(f"he-{i}") for i in range(6)}
    service = hub.services.aggregation
    assert service is not None
    seen: list[dict[str, Any]] = []
    original = service.device_step

    def spy(req: VerifiedRequest) -> dict[str, Any]:
        seen.append(dict(req.body))
        return original(req)

    service.device_step = spy  # type: ignore[method-assign]
    analyst = hub.operator_token("analyst")
    r = hub.client.post("/v1/aggregate/he-rounds", headers=analyst, json={
        "devices": sorted(agents), "dims": DIMS, **key, "value_bits": 16, "max_summands": 16, "timeout_s": 60})
    assert r.status_code == 200, r.text
    rid = r.json()["round"]
    rng = random.Random(8)
    values = {d: [rng.randrange(1 << 16) for _ in range(DIMS)] for d in agents}
    clients = {d: HeClient(lambda body, a=a: a.request("aggregate", AGGREGATE_PATH, body), rid, values[d])
               for d, a in agents.items()}
    absent = {"he-1", "he-4"}  # a third never send
    for d, c in clients.items():
        if d not in absent:
            assert c.step() == "submit"
    part = cbor2.dumps({"upload": bytes(16), "part": 0, "words": bytes(4 * 8192)})
    with pytest.raises(EnrollmentError, match="409 message_duplicate"):  # one encrypted vector per device
        agents["he-0"].request("aggregate", AGGREGATE_PATH, {"round": rid, "step": "he_submit", "message": part})
    bad_index = cbor2.dumps({"upload": bytes(16), "part": 10, "words": bytes(4 * 8192)})  # one ciphertext: 0..9
    short = cbor2.dumps({"upload": bytes(16), "part": 0, "words": bytes(100)})
    unreduced = cbor2.dumps({"upload": bytes(16), "part": 3, "words": PRIMES[3].to_bytes(4, "little") * 8192})
    for message in (bad_index, short, unreduced):
        with pytest.raises(EnrollmentError, match="400 malformed"):
            agents["he-1"].request("aggregate", AGGREGATE_PATH, {"round": rid, "step": "he_submit", "message": message})
    service.clock = Later(service.clock, timedelta(seconds=61))  # the absent never send: the deadline closes it
    status = hub.client.get(f"/v1/aggregate/rounds/{rid}", headers=analyst).json()
    assert status["phase"] == "done" and status["submitted"] == 4
    expected = [sum(col) for col in zip(*(values[d] for d in agents if d not in absent), strict=True)]
    assert open_result(status, PARAMS, decryptor) == expected
    # the hub's share alone opens nothing: without the decryptor's partial the noise check fails
    from iotguard.analytics.rlwe import combine_partials

    enc = [np.frombuffer(base64.b64decode(x), dtype="<u4").astype(np.uint64).reshape(2, 5, 8192)
           for x in status["encrypted_sum"]]
    hub_partial = [np.frombuffer(base64.b64decode(x), dtype="<u4").astype(np.uint64).reshape(5, 8192)
                   for x in status["hub_partial"]]
    with pytest.raises(MalformedError):
        combine_partials(PARAMS, enc, [hub_partial], DIMS)
    # instrumented: no part the hub received holds a value, or a value scaled as the plaintext is, in clear
    submitted = [cbor2.loads(bytes(b["message"])) for b in seen if b["step"] == "he_submit"]
    submitted = [doc for doc in submitted if doc["upload"] != bytes(16)]  # not the test's own malformed parts
    assert len(submitted) == 4 * 10
    delta = PARAMS.delta
    for doc in submitted:
        words = np.frombuffer(doc["words"], dtype="<u4").astype(np.int64)
        p = PRIMES[doc["part"] % 5]
        for d in agents:
            m = np.zeros(8192, dtype=np.int64)
            m[:DIMS] = values[d]
            for candidate in (m % p, m * (delta % p) % p):
                diff = (words - candidate) % p
                assert np.minimum(diff, p - diff).max() > 1 << 24  # not the value plus small noise
    hub.deliver()
    assert {"message_duplicate", "ciphertext_malformed"} <= _refusals(hub)


def test_the_decryptor_cli_makes_a_share_and_opens_a_round_with_it(tmp_path, capsys) -> None:
    import json

    from iotguard.audit.log import MemoryAuditSink
    from iotguard.cli.main import main
    from iotguard.clock import FixedClock
    from iotguard.hub.services.aggregation import SecureAggregationService
    from tests.analytics.test_round_store import T0, _send

    share_file = tmp_path / "decryptor.share"
    assert main(["aggregate", "decryptor-keygen", "--out", str(share_file)]) == 0
    key = json.loads(capsys.readouterr().out)
    assert share_file.stat().st_mode & 0o777 == 0o600
    assert main(["aggregate", "decryptor-keygen", "--out", str(share_file)]) != 0  # never overwritten
    capsys.readouterr()
    service = SecureAggregationService(MemoryAuditSink(), FixedClock(T0))
    devices = ["cam-1", "cam-2"]
    rid = service.start_he(devices, 3, seed=bytes.fromhex(key["seed"]),
                           decryptor_part=base64.b64decode(key["decryptor_part"]), value_bits=8, actor="analyst")
    for i, d in enumerate(devices):
        HeClient(_send([service], d), rid, [i, 10, 255]).step()
    (tmp_path / "round.json").write_text(json.dumps(service.status(rid, actor="analyst")))
    assert main(["aggregate", "open", str(tmp_path / "round.json"), "--share", str(share_file),
                 "--value-bits", "8", "--max-summands", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["sum"] == [1, 20, 510]
    assert main(["aggregate", "run", "--he", "--devices", "3", "--dims", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact"] is True
