"""Homomorphic-sum rounds over the device plane: devices send packed Paillier ciphertexts in signed
``aggregate`` requests; the hub adds them and applies only its key share; the independent decryptor's
share opens the exact sum; the hub never holds a value; malformed ciphertexts are refused with a reason."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import cbor2
import pytest

from iotguard.agent.secagg import AGGREGATE_PATH, HeClient
from iotguard.analytics.homomorphic import combine_partials, generate_split_key
from iotguard.errors import EnrollmentError
from iotguard.identity import VerifiedRequest
from tests.analytics.test_secagg_rounds import Later, _refusals
from tests.hub.conftest import HubParts

DIMS = 60


def test_an_he_round_over_the_device_plane_opens_only_with_both_shares(hub: HubParts) -> None:
    pk, hub_share, decryptor = generate_split_key(2048, value_bits=16, max_summands=16)
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
        "devices": sorted(agents), "dims": DIMS, "n": format(pk.n, "x"), "value_bits": 16, "max_summands": 16,
        "hub_share": format(hub_share.d, "x"), "timeout_s": 60})
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
    with pytest.raises(EnrollmentError, match="409 message_duplicate"):  # one encrypted vector per device
        agents["he-0"].request("aggregate", AGGREGATE_PATH,
                               {"round": rid, "step": "he_submit", "message": cbor2.dumps({"ciphertexts": []})})
    with pytest.raises(EnrollmentError, match="400 malformed"):  # wrong count and size
        agents["he-1"].request("aggregate", AGGREGATE_PATH,
                               {"round": rid, "step": "he_submit", "message": cbor2.dumps({"ciphertexts": [b"\0"]})})
    with pytest.raises(EnrollmentError, match="400 malformed"):  # zero is no ciphertext
        agents["he-1"].request("aggregate", AGGREGATE_PATH, {"round": rid, "step": "he_submit", "message": cbor2.dumps(
            {"ciphertexts": [bytes(512)]})})
    service.clock = Later(service.clock, timedelta(seconds=61))  # the absent never send: the deadline closes it
    status = hub.client.get(f"/v1/aggregate/rounds/{rid}", headers=analyst).json()
    assert status["phase"] == "done" and status["submitted"] == 4
    encrypted = [int(x, 16) for x in status["encrypted_sum"]]
    hub_partial = [int(x, 16) for x in status["hub_partial"]]
    opened = combine_partials(pk, hub_partial, decryptor.partial_decrypt(encrypted))
    assert pk.unpack(opened, DIMS) == [sum(col) for col in
                                        zip(*(values[d] for d in agents if d not in absent), strict=True)]
    # the hub's share alone opens nothing
    assert pk.unpack([(p - 1) // pk.n for p in hub_partial], DIMS) != pk.unpack(opened, DIMS)
    # instrumented: no message the hub received holds a value or a packed plaintext
    plain = set(pk.pack([v for d in agents for v in values[d]]))
    for body in seen:
        if body["step"] == "he_submit" and body["message"]:
            doc = cbor2.loads(bytes(body["message"]))
            for c in doc["ciphertexts"]:
                assert int.from_bytes(c, "big") not in plain
    hub.deliver()
    assert {"message_duplicate", "ciphertext_malformed"} <= _refusals(hub)
