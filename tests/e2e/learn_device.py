"""One learning device as its own process (used by ``test_e2e_learning``).

``python -m tests.e2e.learn_device DATA_DIR HUB_URL BROKER_URL DEVICE_ID CODE INDEX IMAGES_DIR FIRMWARE_KEY [unsafe]``:
enrolls, boots its image set (measured, and secure unless ``unsafe``) and attests to the hub (the hub's appraisal
sets its posture), writes the verdict to ``DATA_DIR/attested``, waits for ``DATA_DIR/run`` to name a training run,
takes part in every round with data that never leaves this process (a secure run: only masked, noised vectors;
each update and its integer forms are kept in ``DATA_DIR/clear.npz`` for the test to look for in the hub's traffic),
then fetches the published model, verifies it against the pinned fleet CA, writes its test accuracy to
``DATA_DIR/result`` and runs it on its own samples, reporting only the recognised digits through its data contract
(``mic-1``'s ``digit``) over the broker. A device the hub refuses writes ``refused <reason>`` there instead.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from iotguard.agent import Agent
from iotguard.agent import learning as agent_learning
from iotguard.agent.attester import boot_from_config
from iotguard.agent.inference import OnDeviceInference
from iotguard.agent.learning import LearningParticipant
from iotguard.config import AgentConfig
from iotguard.errors import EnrollmentError
from iotguard.learn import LocalTrainingClient, Model
from iotguard.learn.data import partition, split_train_test, synthetic_digits
from iotguard.learn.distributed import discrete_gaussian
from iotguard.learn.model import accuracy
from iotguard.privacy import ConsentState

FEATURES = 24


def main(argv: list[str]) -> int:
    data_dir, hub_url, broker_url, device_id, code = Path(argv[0]), argv[1], argv[2], argv[3], argv[4]
    index = int(argv[5])
    cfg = AgentConfig(data_dir=str(data_dir), hub_url=hub_url, broker_url=broker_url, suites=["chacha20-poly1305"],
                      boot_images_dir=argv[6], firmware_public_key=argv[7],
                      unsafe_allow_unverified_boot=argv[8:] == ["unsafe"])
    agent = Agent(cfg, device_id)
    agent.enroll(code)
    verdict = agent.attest(boot_from_config(cfg, agent.keystore))
    (data_dir / "attested").write_text(str(verdict["trust_tier"]))
    train, test = split_train_test(synthetic_digits(speakers=5, per_class=24, features=FEATURES, seed=7), 0.25, 7)
    mine = partition(train, 2, seed=7)[index % 10]  # this device's rows only
    model = Model(FEATURES, 10)
    learner = LearningParticipant(agent, LocalTrainingClient(model, mine.x, mine.y, seed=index))
    # What the test must never find in the hub's recorded traffic: each update, its fixed-point and noised forms.
    clear_updates: list[np.ndarray] = []
    clear_ints: list[np.ndarray] = []
    train_once = learner._participant.train

    def recording_train(*args: Any) -> Any:
        update = train_once(*args)
        clear_updates.append(update.vector.copy())
        return update

    def recording_noise(values: list[int], std: float) -> list[int]:
        noised = discrete_gaussian(values, std)
        clear_ints.extend([np.asarray(values, np.int64), np.asarray(noised, np.int64)])
        return noised

    learner._participant.train = recording_train  # type: ignore[method-assign,assignment]
    agent_learning.discrete_gaussian = recording_noise  # type: ignore[attr-defined]
    deadline = time.monotonic() + 400
    while not (data_dir / "run").exists():
        if time.monotonic() > deadline:
            return 2
        time.sleep(0.2)
    run_id = (data_dir / "run").read_text().strip()
    while time.monotonic() < deadline:
        try:
            answer = learner.train_round(run_id)
        except EnrollmentError as exc:
            if "run_not_running" in str(exc):  # the run completed
                break
            if "403" in str(exc) and "not_selected" not in str(exc):  # refused: posture, not enrolled
                (data_dir / "result").write_text(f"refused {exc}")
                return 0
            time.sleep(0.3)
            continue
        if answer["status"] == "completed":
            break
        time.sleep(0.3 if answer["status"] == "waiting" else 0.1)
    else:
        return 3
    if clear_updates:
        np.savez(data_dir / "clear.npz", updates=np.stack(clear_updates), ints=np.stack(clear_ints))
    artifact = learner.fetch_model("digits")
    score = accuracy(artifact.model, artifact.parameters, test.x, test.y)
    (data_dir / "result").write_text(f"{artifact.version} {score}")
    agent.attach_privacy("mic-1", ConsentState(device_id))
    agent.connect()
    local = OnDeviceInference(agent, artifact, "digit")
    reported = 0
    for i in range(3):  # one recognised digit a second (the contract's keypad rate)
        reported += len(local.report(test.x[i:i + 1]))
        time.sleep(1.1)
    deadline = time.monotonic() + 30
    while agent.pending() and time.monotonic() < deadline:
        agent.resend_due(force=True)
        time.sleep(0.5)
    (data_dir / "inferred").write_text(str(reported))
    agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
