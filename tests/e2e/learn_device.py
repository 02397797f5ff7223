"""One learning device as its own process (used by ``test_e2e_learning``).

``python -m tests.e2e.learn_device DATA_DIR HUB_URL DEVICE_ID ENROLLMENT_CODE INDEX``: enrolls, waits for
``DATA_DIR/run`` to name a training run, takes part in every round with data that never leaves this process,
then fetches the published model, verifies it against the pinned fleet CA and writes its test accuracy to
``DATA_DIR/result``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from iotguard.agent import Agent
from iotguard.agent.learning import LearningParticipant
from iotguard.config import AgentConfig
from iotguard.errors import EnrollmentError
from iotguard.learn import LocalTrainingClient, Model
from iotguard.learn.data import partition, split_train_test, synthetic_digits
from iotguard.learn.model import accuracy

FEATURES = 24


def main(argv: list[str]) -> int:
    data_dir, hub_url, device_id, code, index = Path(argv[0]), argv[1], argv[2], argv[3], int(argv[4])
    agent = Agent(AgentConfig(data_dir=str(data_dir), hub_url=hub_url, suites=["chacha20-poly1305"]), device_id)
    agent.enroll(code)
    (data_dir / "enrolled").write_text("ok")
    train, test = split_train_test(synthetic_digits(speakers=5, per_class=24, features=FEATURES, seed=7), 0.25, 7)
    mine = partition(train, 2, seed=7)[index]  # this device's rows only
    model = Model(FEATURES, 10)
    learner = LearningParticipant(agent, LocalTrainingClient(model, mine.x, mine.y, seed=index))
    deadline = time.monotonic() + 240
    while not (data_dir / "run").exists():
        if time.monotonic() > deadline:
            return 2
        time.sleep(0.2)
    run_id = (data_dir / "run").read_text().strip()
    while time.monotonic() < deadline:
        try:
            answer = learner.train_round(run_id)
        except EnrollmentError as exc:  # the round closed while this device trained, or the run finished
            if "run_not_running" in str(exc):
                break
            if "update_stale" not in str(exc):
                raise
            continue
        if answer["status"] == "completed":
            break
        if answer["status"] == "waiting":
            time.sleep(0.3)
    else:
        return 3
    artifact = learner.fetch_model("digits")
    score = accuracy(artifact.model, artifact.parameters, test.x, test.y)
    (data_dir / "result").write_text(f"{artifact.version} {score}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
