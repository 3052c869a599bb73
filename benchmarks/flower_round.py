"""Flower's per-round overhead on this machine: round wall time vs the slowest client's training.

Starts the real deployment on loopback (TLS SuperLink with node authentication, N SuperNodes on
synthetic Kaggle-layout data, the FL Initializer), runs a few rounds and prints JSON::

    {"model_bytes", "overhead_ratio", "rounds": [{"round", "wall_s", "max_client_train_s",
     "network_bytes"}, ...], ...}

* ``wall_s``: the ServerApp's time from sending round r's train messages to the end of its
  checkpoint (train + evaluate phases, aggregation, recording).
* ``max_client_train_s``: the slowest participant's pure ``task.train`` time in that round.
* ``overhead_ratio``: sum of ``wall_s`` / sum of ``max_client_train_s`` (1.0 = no overhead).
* ``network_bytes``: the run's SuperLink traffic (``flwr ls --format json``, in + out) added
  during the round, sampled when the round's record reaches the initializer; by then the
  ServerApp has usually pushed the next round's train messages, so a round's figure holds the
  next round's downloads. ``network_bytes_per_round_mean`` (total / rounds) has no such skew;
  ``model_transfers_per_round`` divides it by ``model_bytes`` (3 x nodes expected: train down,
  train up, evaluate down).

Usage: ``python benchmarks/flower_round.py [--width 16 --image-size 128 --rounds 3 --nodes 3]``
(``--width 32 --image-size 224`` is the case study's 26 MB model; slow on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedcloud.core.flower import quiet_flower_here
from fedcloud.local.localfed import LocalFederation, local_federation
from fedcloud.local.synth import generate
from fl.app.runconfig import MODEL_CLASSES, RunConfig
from fl.app.task import build_model, model_bytes
from fl.initializer.training import CONNECTION, start_training

LINK_HOST = "127.0.2.101"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="covid_cnn", choices=sorted(MODEL_CLASSES))
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=60, help="per participant")
    parser.add_argument("--epochs", type=int, default=1)
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
                    node_wait_s=120, seed=1)
    size = model_bytes(build_model(cfg.model_spec()))
    names = [f"p{i + 1}" for i in range(args.nodes)]
    root = Path(tempfile.mkdtemp(prefix="fedcloud-bench-"))
    try:
        kind = "cifar" if args.model == "cifar_cnn" else "covid"
        data = generate(kind, root / "data", names, args.train_images, 12,
                        image_size=image_size, seed=1)
        hosts = {name: f"127.0.2.{110 + i}" for i, name in enumerate(names)}
        with local_federation(root, names, data, link_host=LINK_HOST, node_hosts=hosts,
                              torch_threads=args.torch_threads, online_timeout_s=120) as fed:
            return _run(fed, cfg, args, size, image_size)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _run(fed: LocalFederation, cfg: RunConfig, args: argparse.Namespace, size: int,
         image_size: int) -> int:
    """Train on the running federation and print the round figures; return the exit code."""
    link, certs, cli, keys, root = fed.link, fed.certs, fed.cli, fed.node_keys, fed.root
    traffic: list[int] = []
    run_id: list[int] = []

    def on_line(line: str) -> None:
        if not run_id and "Successfully started run" in line:
            run_id.append(int(line.rsplit(" ", 1)[-1]))

    def on_round(_doc: dict[str, Any]) -> None:
        if run_id:
            info = cli.run_info(CONNECTION, run_id[0])
            traffic.append(info.inbound_bytes + info.outbound_bytes)

    started = time.monotonic()
    result = start_training(superlink=link.address, ca_cert=certs.ca.cert, node_keys=keys,
                            run_config=cfg, state_dir=root / "state", cli=cli,
                            on_round=on_round, on_line=on_line)
    total_s = time.monotonic() - started
    if result.status != "COMPLETED":
        print(json.dumps({"error": result.status, "detail": result.detail}))
        return 1
    rounds = []
    previous = 0
    for i, rnd in enumerate(result.rounds):
        cumulative = traffic[i] if i < len(traffic) else result.network_bytes
        rounds.append({
            "round": rnd["round"],
            "wall_s": round(rnd["round_wall_s"], 2),
            "max_client_train_s": round(rnd["max_client_train_s"], 3),
            "network_bytes": cumulative - previous,
            "train_phase_s": round(rnd["train_phase_s"], 2),
            "evaluate_phase_s": round(rnd["evaluate_phase_s"], 2),
            "accuracy": round(rnd["metrics"]["accuracy"], 3),
        })
        previous = cumulative
    wall = sum(r["wall_s"] for r in rounds)
    train = sum(r["max_client_train_s"] for r in rounds)
    per_round_messages = 3 * args.nodes  # train down + train up + evaluate down
    out = {
        "model": args.model, "width": args.width, "image_size": image_size,
        "nodes": args.nodes, "train_images_per_node": args.train_images,
        "model_bytes": size,
        "overhead_ratio": round(wall / train, 2) if train else None,
        "rounds": rounds,
        "expected_bytes_per_round": size * per_round_messages,
        "network_bytes_per_round_mean": result.network_bytes // max(len(rounds), 1),
        "model_transfers_per_round": round(
            result.network_bytes / max(len(rounds), 1) / size, 3),
        "superexec_poll_s": args.superexec_poll_s,
        "run_total_s": round(total_s, 1),
        "flower_elapsed_s": round(result.elapsed_s, 1),
        "network_bytes_total": result.network_bytes,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
