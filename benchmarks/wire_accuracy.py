"""float16 on the wire against the demo run's own sensitivity: final accuracy per seed.

Runs the demo's training (``stacks/Pulumi.local.yaml``: ``covid_cnn`` width 8 at 64 px, 3
hospitals x 120 training and 48 test images of the local stack's synthetic data, 3 rounds,
secure aggregation) in this process: the real ClientApp with its mods and the real strategy,
through the test suite's ``InProcessGrid`` (no processes, no network: the same numbers as
``fedcloud up``, faster). Per seed three runs: ``float32``; ``float16`` (``wire-dtype``); and
``float32`` whose initial model alone is perturbed by a uniform relative error of
``--perturbation`` (default 5e-4, float16's rounding), the control that says how much any
perturbation of that size moves this run. Prints one JSON object.

Usage: ``.venv/bin/python benchmarks/wire_accuracy.py [--seeds 1 2 3] [--learning-rate 0.05]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from fedcloud.core.flower import quiet_flower_here

PARTICIPANTS = ("hospital-us", "hospital-kr", "hospital-it")
LEARNING_RATE = 0.01  # stacks/Pulumi.local.yaml
RUNS = (("float32", "float32", False), ("float16", "float16", False),
        ("float32_perturbed", "float32", True))


class _Store:
    def __init__(self) -> None:
        self.rounds: list[Any] = []

    def log_round(self, record: Any, state: dict[str, np.ndarray]) -> None:
        self.rounds.append(record)


def _initial(cfg: Any, perturbation: float) -> dict[str, np.ndarray]:
    import torch

    from fl.app import task

    torch.manual_seed(cfg.seed)
    state = {k: v.detach().numpy().copy()
             for k, v in task.build_model(cfg.model_spec()).state_dict().items()}
    if perturbation:
        rng = np.random.default_rng(cfg.seed + 1000)
        for k, a in state.items():
            if np.issubdtype(a.dtype, np.floating):
                state[k] = (a * (1 + rng.uniform(-perturbation, perturbation, a.shape))
                            ).astype(a.dtype)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--perturbation", type=float, default=5e-4)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    args = parser.parse_args(argv)
    quiet_flower_here()
    from flwr.supercore.task_identity import TaskIdentity

    from fedcloud.local.synth import generate
    from fl.app.runconfig import RunConfig
    from fl.app.strategy import BoundedFedAvg
    from tests.fl.app.inprocess import InProcessGrid

    for attr in ("_run_id", "_node_id", "_task_id"):  # what a SuperNode sets per task
        setattr(TaskIdentity, attr, 1)
    root = Path(tempfile.mkdtemp(prefix="fedcloud-wire-acc-"))
    dirs = generate("covid", root / "data", PARTICIPANTS, 120, 48, image_size=64, seed=7)
    data = [dirs[p] for p in PARTICIPANTS]
    rows = []
    for seed in args.seeds:
        row: dict[str, Any] = {"seed": seed}
        for label, wire, perturbed in RUNS:
            cfg = RunConfig(model="covid_cnn", width=8, image_size=64, num_classes=3, rounds=3,
                            local_epochs=1, batch_size=16, learning_rate=args.learning_rate,
                            fraction_train=1.0, min_nodes=3, phase_timeout_s=60, node_wait_s=0,
                            seed=seed, wire_dtype=wire)
            store = _Store()
            BoundedFedAvg(cfg, store).run(  # type: ignore[arg-type]
                InProcessGrid(cfg, data, root / f"cache-{seed}-{label}"),
                _initial(cfg, args.perturbation if perturbed else 0.0))
            row[label] = {"accuracy": [round(float(r.metrics["accuracy"]), 4)
                                       for r in store.rounds],
                          "loss": [round(float(r.metrics["loss"]), 4) for r in store.rounds]}
        base = row["float32"]["accuracy"][-1]
        row["float16_minus_float32_points"] = round(100 * (row["float16"]["accuracy"][-1]
                                                           - base), 1)
        row["perturbed_minus_float32_points"] = round(
            100 * (row["float32_perturbed"]["accuracy"][-1] - base), 1)
        rows.append(row)
    f16 = [r["float16_minus_float32_points"] for r in rows]
    ctl = [r["perturbed_minus_float32_points"] for r in rows]
    print(json.dumps({
        "workload": "demo (stacks/Pulumi.local.yaml), in process, secure aggregation",
        "test_images": 3 * 48, "perturbation": args.perturbation,
        "learning_rate": args.learning_rate, "runs": rows,
        "float16_minus_float32_points": {"each": f16, "mean": round(statistics.mean(f16), 1)},
        "perturbed_minus_float32_points": {"each": ctl, "mean": round(statistics.mean(ctl), 1)},
        "float16_within_1_point": all(abs(x) <= 1.0 for x in f16),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
