"""Federated learning benchmark: spoken digits across simulated devices, non-IID by speaker.

Data: the Free Spoken Digit Dataset in ``../shared/data/fsdd`` (6 speakers x 10
digits x 50 takes, 8 kHz WAV; see that folder's README). Each recording becomes
240 MFCC summary features (``iotguard.learn.data.digit_features``); takes 0-4
of every speaker and digit are the test set (the data set's own convention),
the rest are split across ``--devices-per-speaker`` devices per speaker (one
speaker per device group, so devices are non-IID). Features are standardised
with the training rows' mean and variance (a federation gets the same numbers
from a secure-aggregated sum of per-device sums and squares). Model: softmax
regression (2,410 parameters) trained by minibatch SGD on every device.

Runs, all in one process and one run:

(a) centralised SGD on the pooled training rows (real wall-clock seconds);
(b) iotguard FedAvg, all devices equally fast;
(c) with 30 % of the devices ``--slowdown`` times slower: synchronous FedAvg
    (waits for every device), FedAvg with a deadline (drops the stragglers'
    updates) and FedBuff (buffer 10, staleness weight 1/sqrt(1+tau));
(d) DP-FedAvg (user-level: clip 0.5, Gaussian noise calibrated by the RDP
    accountant to epsilon 1, 3 and 8 at delta 1e-5 over the planned rounds)
    against the same FedAvg without noise or clipping;
(e) compression: 8-bit, and top-k 1 % with error feedback plus 8-bit, against
    float32; bytes are the encoded update bytes each device sends per round;
(f) one round through secure aggregation (``--secure-devices`` devices): bytes
    per device and the hub's real seconds per round.

Time: every device really trains; *device time* is simulated (each local round
takes 1 s on a normal device, times a uniform 0.8-1.2 device factor and a 0.9-1.1
per-round jitter; stragglers take ``--slowdown`` times longer), so federated
times are the wall-clock a fleet with those speeds would take, reproducible on a
shared machine (``iotguard.learn.simulation``). Centralised time is measured.

Headline: synchronous FedAvg's time to the target accuracy divided by FedBuff's,
under stragglers (goal >= 2). Other goals: DP at epsilon 3 within 3 accuracy
points of non-private; top-k+8-bit >= 50x fewer bytes within 1 point of float32.

Usage: python bench/learn.py [--quick] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from iotguard.learn.client import LocalTrainingClient, Participant, RoundConfig
from iotguard.learn.compress import Compression
from iotguard.learn.data import Dataset, digit_features, partition, standardise
from iotguard.learn.dp import DpConfig
from iotguard.learn.model import Model, NDArrays, accuracy, sgd
from iotguard.learn.secure import secure_sum
from iotguard.learn.simulation import DeviceTiming, Trace, simulate_fedavg, simulate_fedbuff, straggler_timings
from iotguard.learn.strategy import FedAvg, FedAvgConfig, FedBuff, FedBuffConfig
from iotguard.media.audio import decode_wav

RESULTS = Path(__file__).parent / "results" / "learn.json"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"
TARGET = 0.90
FIT = {"epochs": 3, "batch_size": 16, "lr": 0.1}
CLIP = 0.5
SERVER_LR = 2.0


def load(root: Path, quick: bool) -> tuple[Dataset, Dataset]:
    xs, ys, speakers, takes = [], [], [], []
    names: dict[str, int] = {}
    for f in sorted((root / "recordings").glob("*.wav")):
        digit, speaker, take = f.stem.split("_")
        if quick and int(take) >= 30:
            continue
        xs.append(digit_features(decode_wav(f.read_bytes())))
        ys.append(int(digit))
        speakers.append(names.setdefault(speaker, len(names)))
        takes.append(int(take))
    if not xs:
        raise SystemExit(f"no recordings under {root}/recordings (pass --data)")
    x, y, s, t = np.array(xs), np.array(ys, dtype=np.int64), np.array(speakers, dtype=np.int64), np.array(takes)
    test = t < 5
    x_train, x_test = standardise(x[~test], x[test])
    return Dataset(x_train, y[~test], s[~test]), Dataset(x_test, y[test], s[test])


def participants(model: Model, parts: list[Dataset]) -> list[Participant]:
    return [Participant(f"dev-{i}", f"subject-{i}", LocalTrainingClient(model, p.x, p.y, seed=i), seed=i)
            for i, p in enumerate(parts)]


def round_config(clip: float | None = None, compression: Compression | None = None) -> Callable[[int], RoundConfig]:
    return lambda v: RoundConfig(v, FIT, clip_norm=clip, compression=compression or Compression())


def summary(trace: Trace, cpu_s: float) -> dict[str, Any]:
    t = trace.time_to(TARGET)
    return {"final_accuracy": round(trace.final_accuracy(), 4), "steps": len(trace.points),
            "time_to_target_s": None if t is None else round(t, 2), "stalled": trace.stalled,
            "bytes_per_device_round": round(trace.bytes_per_device_round(), 1), "bench_cpu_s": round(cpu_s, 2),
            "curve": [(round(a, 2), round(c, 4)) for a, _, c in trace.points[:: max(1, len(trace.points) // 20)]]}


def run_fedavg(model: Model, parts: list[Dataset], timings: list[DeviceTiming], evaluate: Callable[[NDArrays], float],
               *, rounds: int, budget_s: float, config: FedAvgConfig, rc: Callable[[int], RoundConfig],
               ) -> dict[str, Any]:
    started = time.process_time()
    fed = FedAvg(model, model.initial(0), config, population=len(parts))
    trace = simulate_fedavg(fed, participants(model, parts), timings, evaluate, round_config=rc,
                            time_budget_s=budget_s, max_rounds=rounds)
    return summary(trace, time.process_time() - started)


def centralised(model: Model, train: Dataset, evaluate: Callable[[NDArrays], float], epochs: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    params, spent, reached, curve = model.initial(0), 0.0, None, []
    for _ in range(epochs):
        started = time.perf_counter()
        params = sgd(model, params, train.x, train.y, epochs=1, batch_size=32, lr=0.05, rng=rng)
        spent += time.perf_counter() - started
        acc = evaluate(params)
        curve.append(round(acc, 4))
        if reached is None and acc >= TARGET:
            reached = spent
    return {"final_accuracy": curve[-1], "epochs": epochs, "time_to_target_s": None if reached is None else
            round(reached, 4), "clock": "measured wall-clock on this machine", "curve": curve}


def secure_round(model: Model, parts: list[Dataset], devices: int) -> dict[str, Any]:
    ps = participants(model, parts[:devices])
    updates = [p.train(model.initial(0), 0, RoundConfig(0, FIT, clip_norm=CLIP)) for p in ps]
    started = time.perf_counter()
    total, view = secure_sum({i: u.vector for i, u in enumerate(updates)}, bound=CLIP)
    spent = time.perf_counter() - started
    plain = np.sum([u.vector for u in updates], axis=0)
    return {"devices": devices, "dims": model.size(), "seconds_per_round_all_parties": round(spent, 3),
            "bytes_per_device": round(float(np.mean(list(view.bytes_per_device.values()))), 1),
            "max_abs_error_vs_plain_sum": float(np.max(np.abs(total - plain)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="takes 0-29 only, fewer devices and rounds")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"FSDD folder (default {DEFAULT_DATA})")
    ap.add_argument("--devices-per-speaker", type=int, default=None)
    ap.add_argument("--slowdown", type=float, default=5.0, help="how many times slower a straggler is")
    ap.add_argument("--secure-devices", type=int, default=None)
    args = ap.parse_args()
    wall = time.perf_counter()
    load0 = os.getloadavg()[0]
    train, test = load(args.data, args.quick)
    per = args.devices_per_speaker or (50 if args.quick else 90)
    rounds = 10 if args.quick else 15
    parts = partition(train, per, seed=0)
    n = len(parts)
    model = Model(features=train.x.shape[1], classes=10)

    def evaluate(params: NDArrays) -> float:
        return accuracy(model, params, test.x, test.y)

    results: dict[str, Any] = {"centralised": centralised(model, train, evaluate, 10 if args.quick else 20)}
    even = [DeviceTiming(1.0 * f) for f in np.random.default_rng(1).uniform(0.8, 1.2, n)]
    mean_rc = round_config()
    results["fedavg"] = run_fedavg(model, parts, even, evaluate, rounds=rounds, budget_s=1e9,
                                   config=FedAvgConfig(min_participants=n, server_lr=1.0), rc=mean_rc)

    slow = straggler_timings(n, straggler_fraction=0.3, slowdown=args.slowdown, seed=1)
    budget = 1.2 * args.slowdown * rounds
    stragglers: dict[str, Any] = {"fraction": 0.3, "slowdown": args.slowdown, "budget_s": budget}
    stragglers["fedavg_sync"] = run_fedavg(model, parts, slow, evaluate, rounds=rounds, budget_s=budget,
                                           config=FedAvgConfig(min_participants=n), rc=mean_rc)
    stragglers["fedavg_deadline"] = run_fedavg(
        model, parts, slow, evaluate, rounds=10 * rounds, budget_s=budget,
        config=FedAvgConfig(min_participants=n // 2, deadline_s=1.5), rc=mean_rc)
    started = time.process_time()
    buff = FedBuff(model, model.initial(0), FedBuffConfig(buffer_size=10, server_lr=1.0))
    trace = simulate_fedbuff(buff, participants(model, parts), slow, evaluate, round_config=mean_rc,
                             time_budget_s=budget, max_updates=rounds * n)
    stragglers["fedbuff"] = summary(trace, time.process_time() - started)
    stragglers["fedbuff"]["updates"] = rounds * n
    results["stragglers"] = stragglers

    dp: dict[str, Any] = {"clip_norm": CLIP, "delta": 1e-5, "rounds": rounds, "population": n, "sampling_rate": 1.0}
    dp["non_private"] = run_fedavg(model, parts, even, evaluate, rounds=rounds, budget_s=1e9,
                                   config=FedAvgConfig(min_participants=2, server_lr=1.0), rc=mean_rc)
    for eps in (1, 3, 8):
        cfg = DpConfig.for_epsilon(eps, clip_norm=CLIP, sampling_rate=1.0, rounds=rounds)
        dp[f"epsilon_{eps}"] = run_fedavg(
            model, parts, even, evaluate, rounds=rounds, budget_s=1e9,
            config=FedAvgConfig(min_participants=2, dp=cfg, server_lr=SERVER_LR), rc=round_config(CLIP))
        dp[f"epsilon_{eps}"]["noise_multiplier"] = round(cfg.noise_multiplier, 3)
        dp[f"epsilon_{eps}"]["accounted_epsilon"] = round(cfg.epsilon_after(rounds), 4)
    results["dp"] = dp

    comp: dict[str, Any] = {}
    for name, c in (("float32", Compression("none")), ("q8", Compression("q8")),
                    ("topk1pct+q8", Compression("topk+q8", topk_fraction=0.01))):
        comp[name] = run_fedavg(model, parts, even, evaluate, rounds=3 * rounds, budget_s=1e9,
                                config=FedAvgConfig(min_participants=n), rc=round_config(None, c))
    results["compression"] = comp
    results["secure_aggregation"] = secure_round(model, parts, args.secure_devices or (10 if args.quick else 30))

    sync_t = stragglers["fedavg_sync"]["time_to_target_s"]
    buff_t = stragglers["fedbuff"]["time_to_target_s"]
    ratio = (sync_t / buff_t) if sync_t and buff_t else None
    dp_gap = dp["non_private"]["final_accuracy"] - dp["epsilon_3"]["final_accuracy"]
    byte_ratio = comp["float32"]["bytes_per_device_round"] / comp["topk1pct+q8"]["bytes_per_device_round"]
    comp_gap = comp["float32"]["final_accuracy"] - comp["topk1pct+q8"]["final_accuracy"]
    result = {
        "benchmark": "learn",
        "quick": args.quick,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "numpy": np.__version__,
        "workload": {"data": "fsdd", "train_rows": len(train.y), "test_rows": len(test.y), "devices": n,
                     "devices_per_speaker": per, "model_parameters": model.size(), "target_accuracy": TARGET,
                     "fit": FIT, "rounds": rounds, "device_clock": "simulated (see docstring)"},
        **results,
        "goals": {"fedbuff_half_time_of_sync_fedavg": ratio is not None and ratio >= 2,
                  "dp_eps3_within_3_points": dp_gap <= 0.03,
                  "compression_50x_within_1_point": byte_ratio >= 50 and comp_gap <= 0.01},
        "derived": {"dp_eps3_gap_points": round(100 * dp_gap, 2), "compression_byte_ratio": round(byte_ratio, 1),
                    "compression_gap_points": round(100 * comp_gap, 2)},
        "bench_wall_s": round(time.perf_counter() - wall, 1),
        "headline": {
            "name": "time to target accuracy under 30% stragglers, synchronous FedAvg / FedBuff",
            "unit": "simulated s",
            "value": buff_t,
            "baseline_name": "synchronous FedAvg",
            "baseline_value": sync_t,
            "ratio": None if ratio is None else round(ratio, 2),
            "goal": 2,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"headline": result["headline"], "goals": result["goals"], "derived": result["derived"]}))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
