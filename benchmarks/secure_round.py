"""What secure aggregation costs and what it hides: SecAgg+ rounds against plain ones.

Round times come from the real deployment on loopback (TLS SuperLink with node authentication,
N SuperNodes with warm ClientApp starts, the FL Initializer): the same run config trained plain
and secure on one federation, in this process. Proof figures come from the real ClientApp and
flwr's ``secaggplus_mod`` driven in this process (``tests/fl/app/inprocess.py``), where every
message the aggregator receives can be inspected. Prints JSON: ``secure``, ``rounds``,
``round_wall_s_plain``, ``round_wall_s_secure`` (medians), ``overhead_ratio``,
``max_abs_diff_vs_plain`` (and ``weights_scale``), ``max_corr_with_true_update``,
``dropout_round_ok``, ``epsilon`` at ``delta`` for the DP option.

Usage: ``python benchmarks/secure_round.py [--width 32 --image-size 224] [--skip-deployment]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from fedcloud.core.flower import quiet_flower_here
from fedcloud.local.localfed import local_federation
from fedcloud.local.synth import generate
from fl.app import task
from fl.app.runconfig import RunConfig
from fl.app.strategy import BoundedFedAvg
from fl.initializer.training import start_training
from tests.fl.app.inprocess import InProcessGrid

LINK_HOST = "127.0.2.131"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=60, help="per participant")
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--skip-deployment", action="store_true",
                        help="only the in-process proof figures (no round times)")
    args = parser.parse_args(argv)
    quiet_flower_here()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # the in-process rounds' INFO lines
    cfg = RunConfig(model="covid_cnn", width=args.width, image_size=args.image_size,
                    num_classes=3, rounds=args.rounds, local_epochs=1, batch_size=16,
                    learning_rate=0.02, fraction_train=1.0, min_nodes=2,
                    phase_timeout_s=600, node_wait_s=120, seed=1)
    names = [f"p{i + 1}" for i in range(args.nodes)]
    root = Path(tempfile.mkdtemp(prefix="fedcloud-secure-"))
    try:
        data = generate("covid", root / "data", names, args.train_images, 12,
                        image_size=args.image_size, seed=1)
        dirs = [data[n] for n in names]
        out: dict[str, Any] = {"secure": cfg.secure_aggregation, "rounds": cfg.rounds,
                               "nodes": args.nodes, "width": args.width,
                               "image_size": args.image_size}
        if not args.skip_deployment:
            out.update(_deployment(root, names, data, cfg))
            print(json.dumps(out), file=sys.stderr, flush=True)
        out.update(_proof(root, dirs, replace(cfg, rounds=1, min_nodes=2)))
        print(json.dumps(out), file=sys.stderr, flush=True)
        # The budget does not depend on the model; with 3 participants the noise a DP guarantee
        # needs (z C / 3 per element) swamps a 26 MB model's update, so a small CNN carries it.
        small = generate("covid", root / "data-small", names, args.train_images, 12,
                         image_size=32, seed=1)
        out.update(_privacy(root, [small[n] for n in names],
                            replace(cfg, width=4, image_size=32), args.noise_multiplier,
                            args.delta))
        print(json.dumps(out, indent=1))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _deployment(root: Path, names: list[str], data: dict[str, Path],
                cfg: RunConfig) -> dict[str, Any]:
    """Median round wall times of the same run, plain then secure, on one real federation."""
    hosts = {name: f"127.0.2.{140 + i}" for i, name in enumerate(names)}
    walls: dict[str, list[float]] = {}
    with local_federation(root / "fed", names, data, link_host=LINK_HOST, node_hosts=hosts,
                          torch_threads=1, online_timeout_s=120) as fed:
        for label, secure in (("plain", False), ("secure", True)):
            started = time.monotonic()
            result = start_training(superlink=fed.link.address, ca_cert=fed.certs.ca.cert,
                                    node_keys=fed.node_keys,
                                    run_config=replace(cfg, secure_aggregation=secure),
                                    state_dir=fed.root / f"state-{label}", cli=fed.cli)
            if result.status != "COMPLETED":
                raise SystemExit(json.dumps({"error": result.status, "detail": result.detail}))
            walls[label] = [float(r["round_wall_s"]) for r in result.rounds]
            walls[label + "_total"] = [time.monotonic() - started]
    plain, secure = statistics.median(walls["plain"]), statistics.median(walls["secure"])
    return {"round_wall_s_plain": round(plain, 2), "round_wall_s_secure": round(secure, 2),
            "overhead_ratio": round(secure / plain, 3),
            "rounds_wall_s": {k: [round(v, 2) for v in vs] for k, vs in walls.items()}}


def _run(cfg: RunConfig, dirs: list[Path], cache: Path,
         die_after: dict[int, str] | None = None) -> tuple[InProcessGrid, Any, Any, Any]:
    import torch

    grid = InProcessGrid(cfg, dirs, cache)
    grid.die_after.update(die_after or {})
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg.model_spec())
    initial = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    strategy = BoundedFedAvg(cfg, None)
    final = strategy.run(grid, initial)  # type: ignore[arg-type]
    return grid, strategy, initial, final


def _proof(root: Path, dirs: list[Path], cfg: RunConfig) -> dict[str, Any]:
    """Secure vs plain aggregate; correlation of every received masked vector; a dropout."""
    for attr in ("_run_id", "_node_id", "_task_id"):  # set by Flower in its own processes
        setattr(TaskIdentity, attr, 1)
    cache = root / "cache"
    plain_grid, _, initial, plain = _run(replace(cfg, secure_aggregation=False), dirs, cache)
    grid, _, _, secure = _run(cfg, dirs, cache)
    truth = []
    for msg in plain_grid.received:
        arrays = msg.content.array_records.get("arrays")
        if arrays is not None and msg.metadata.message_type == "train":
            truth.append(np.concatenate([arrays[k].numpy().ravel() for k in initial]))
    corr, clear_arrays = 0.0, 0
    for msg in grid.received:
        clear_arrays += sum(len(r) for r in msg.content.array_records.values())
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is None or Key.MASKED_PARAMETERS not in configs:
            continue
        masked = np.concatenate([bytes_to_ndarray(b).astype(np.float64).ravel()
                                 for b in configs[Key.MASKED_PARAMETERS]])[1:]
        for update in truth:
            corr = max(corr, abs(float(np.corrcoef(masked[: update.size], update)[0, 1])))
    scale = max(float(np.abs(v).max()) for v in plain.values())
    diff = max(float(np.abs(secure[k] - plain[k]).max()) for k in plain)
    dropped_grid, strategy, _, dropped = _run(
        cfg, dirs, cache, die_after={len(dirs): Stage.COLLECT_MASKED_VECTORS})
    record = strategy.rounds[-1]
    dropout_ok = (len(dirs) in dropped_grid.dead and bool(record.extra.get("secagg_lost"))
                  and max(float(np.abs(dropped[k] - plain[k]).max()) for k in plain)
                  <= 1e-3 * scale)
    return {"max_abs_diff_vs_plain": diff, "weights_scale": scale,
            "max_abs_diff_rel": diff / scale, "max_corr_with_true_update": round(corr, 5),
            "arrays_in_clear_received": clear_arrays, "dropout_round_ok": dropout_ok,
            "dropout_lost": dict(record.extra.get("secagg_lost", {}))}


def _privacy(root: Path, dirs: list[Path], cfg: RunConfig, noise: float,
             delta: float) -> dict[str, Any]:
    """The DP option (client placement) for ``rounds`` rounds: epsilon at ``delta``."""
    dp = replace(cfg, dp_placement="client", dp_clipping_norm=1.0, dp_noise_multiplier=noise,
                 dp_delta=delta, min_nodes=2)
    _, strategy, _, _ = _run(dp, dirs, root / "cache")
    eps = [float(r.extra["dp_epsilon"]) for r in strategy.rounds]
    return {"epsilon": round(eps[-1], 3), "delta": delta, "dp_noise_multiplier": noise,
            "dp_clipping_norm": 1.0, "dp_placement": "client", "dp_model_width": cfg.width,
            "epsilon_per_round": [round(e, 3) for e in eps],
            "dp_accuracy_last_round": round(strategy.rounds[-1].metrics["accuracy"], 4)}


if __name__ == "__main__":
    sys.exit(main())
