"""Flower's per-round overhead and bytes on this machine: the case study's workload, lean rounds.

Starts the real deployment on loopback (TLS SuperLink with node authentication, N SuperNodes on
synthetic Kaggle-layout data, the FL Initializer) and trains the ~26 MB chest X-ray CNN (width
32, 224 px), 3 nodes, 60 training images per node, one local epoch, 3 rounds. Prints JSON:

* ``overhead_s_per_round``: median over rounds of the round's wall time (the ServerApp's time
  from pushing round r to its aggregate) minus the slowest client's pure training time;
  ``overhead_ratio``: median of round wall / slowest client's training (1.0 = no overhead).
* ``phases_per_round``: message exchanges per round (from each round's record).
* ``model_copies_per_round``: bytes Flower recorded for the training rounds / model bytes /
  rounds; ``final_eval_copies``: the one final evaluation's. Both from Flower's own run records
  (``flwr ls``: the SuperLink's Fleet traffic, in + out) of two runs on the same federation,
  ``rounds`` and 1 round: their difference holds only training rounds.
* ``wire_bytes_measured`` (the ``rounds`` run) and ``wire_bytes_predicted``
  (``fl/app/protocol.py``'s declaration), ``wire_bytes_error_pct``.

Usage: ``python benchmarks/flower_round.py [--wire-dtype float16] [--width 16 --image-size 128]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedcloud.core.flower import quiet_flower_here
from fedcloud.local.localfed import LocalFederation, local_federation
from fedcloud.local.synth import generate
from fl.app.protocol import WIRE_DTYPES, traffic
from fl.app.runconfig import MODEL_CLASSES, RunConfig
from fl.app.task import build_model, model_bytes
from fl.initializer.training import TrainingResult, start_training

LINK_HOST = "127.0.2.101"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="covid_cnn", choices=sorted(MODEL_CLASSES))
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--wire-dtype", default="float32", choices=sorted(WIRE_DTYPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=60, help="per participant")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="model initialisation and data")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="per ClientApp (the nodes share this machine's cores)")
    parser.add_argument("--superexec-poll-s", type=float, default=None,
                        help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL for every Flower process "
                        "(Flower's default: 1 s)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    quiet_flower_here()
    if args.superexec_poll_s is not None:  # inherited by every process started below
        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.superexec_poll_s)
    logging.basicConfig(level=logging.WARNING)

    image_size = 32 if args.model == "cifar_cnn" else args.image_size
    cfg = RunConfig(model=args.model, width=args.width, image_size=image_size,
                    num_classes=MODEL_CLASSES[args.model], rounds=args.rounds,
                    local_epochs=args.epochs, batch_size=16, learning_rate=0.02,
                    fraction_train=1.0, min_nodes=args.nodes, phase_timeout_s=600,
                    node_wait_s=120, seed=args.seed, wire_dtype=args.wire_dtype,
                    secure_aggregation=False)  # its cost: benchmarks/secure_round.py
    size = model_bytes(build_model(cfg.model_spec()))
    names = [f"p{i + 1}" for i in range(args.nodes)]
    root = Path(tempfile.mkdtemp(prefix="fedcloud-bench-"))
    try:
        kind = "cifar" if args.model == "cifar_cnn" else "covid"
        data = generate(kind, root / "data", names, args.train_images, 12,
                        image_size=image_size, seed=args.seed)
        hosts = {name: f"127.0.2.{110 + i}" for i, name in enumerate(names)}
        with local_federation(root, names, data, link_host=LINK_HOST, node_hosts=hosts,
                              torch_threads=args.torch_threads, online_timeout_s=120) as fed:
            return _run(fed, cfg, args, size, image_size)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _train(fed: LocalFederation, cfg: RunConfig, name: str) -> tuple[TrainingResult, float]:
    started = time.monotonic()
    result = start_training(superlink=fed.link.address, ca_cert=fed.certs.ca.cert,
                            node_keys=fed.node_keys, run_config=cfg,
                            state_dir=fed.root / f"state-{name}", cli=fed.cli)
    return result, time.monotonic() - started


def _run(fed: LocalFederation, cfg: RunConfig, args: argparse.Namespace, size: int,
         image_size: int) -> int:
    """Train on the running federation and print the round figures; return the exit code."""
    one, _ = _train(fed, replace(cfg, rounds=1), "one-round")
    result, total_s = _train(fed, cfg, "main")
    for res in (one, result):
        if res.status != "COMPLETED":
            print(json.dumps({"error": res.status, "detail": res.detail}))
            return 1
    rounds = [{
        "round": rnd["round"],
        "wall_s": round(rnd["round_wall_s"], 2),
        "max_client_train_s": round(rnd["max_client_train_s"], 3),
        "overhead_s": round(rnd["round_wall_s"] - rnd["max_client_train_s"], 2),
        "phases": rnd.get("phases"),
        "max_client_process_s": round(rnd.get("max_client_process_s", -1.0), 2),
        "accuracy": round(rnd["metrics"]["accuracy"], 4),
    } for rnd in result.rounds]
    declared = traffic(cfg.wire_dtype, cfg.secure_aggregation)
    down, up = declared.job_bytes(size, args.nodes, cfg.rounds)
    per_round = (result.network_bytes - one.network_bytes) / max(cfg.rounds - 1, 1)
    copies = per_round / size
    final_copies = (one.network_bytes - per_round) / size
    out = {
        "model": args.model, "width": args.width, "image_size": image_size,
        "nodes": args.nodes, "train_images_per_node": args.train_images,
        "rounds_run": cfg.rounds, "wire_dtype": cfg.wire_dtype, "model_bytes": size,
        "overhead_s_per_round": round(statistics.median(r["overhead_s"] for r in rounds), 2),
        "overhead_ratio": round(statistics.median(
            r["wall_s"] / r["max_client_train_s"] for r in rounds), 2),
        "phases_per_round": max(int(r["phases"] or 0) for r in rounds),
        "model_copies_per_round": round(copies, 3),
        "model_copies_per_round_declared": declared.round_copies() * args.nodes
        * declared.wire_ratio,
        "final_eval_copies": round(final_copies, 3),
        "wire_bytes_measured": result.network_bytes,
        "wire_bytes_predicted": int(down + up),
        "wire_bytes_error_pct": round(100 * (result.network_bytes - (down + up))
                                      / (down + up), 2),
        "accuracy_last_round": rounds[-1]["accuracy"],
        "final_evaluate_s": round(result.rounds[-1].get("final_evaluate_s", 0.0), 2),
        "final_client_process_s": round(result.rounds[-1].get("final_client_process_s", 0.0), 2),
        "rounds": rounds,
        "superexec_poll_s": os.environ.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL"),
        "run_total_s": round(total_s, 1),
        "flower_elapsed_s": round(result.elapsed_s, 1),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
