"""The aggregator's memory and aggregation time, measured on this machine (prints JSON).

Each measurement runs in a fresh process with flwr and torch imported (what a ServerApp
process holds before any model arrives: ``baseline_rss_mb``), then holds N float32 updates of
M MB as Flower ``RecordDict`` replies and aggregates them, once with the app's FedAvg
(``fl.app.wire.from_record`` + ``weighted_mean``) and once with Flower's own
``aggregate_arrayrecords``. Reported: peak RSS above the baseline in model copies
(``held_copies``; minus N = ``strategy_copies``) and seconds per MB of updates aggregated, on
one thread (numpy's element-wise sums are single-threaded). optimizer/README.md ("VM size")
quotes the figures. Run: ``.venv/bin/python benchmarks/aggregator_memory.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARRAYS_PER_MODEL = 8  # a model is several layers; 8 arrays of equal size


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def child(n: int, model_mb: float, path: str) -> dict[str, Any]:
    """One measurement (runs in a fresh process)."""
    import flwr  # noqa: F401  (the ServerApp process imports both)
    import numpy as np
    import torch
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from fl.app.wire import from_record, to_record, weighted_mean

    torch.set_num_threads(1)
    baseline_kb = _status_kb("VmRSS")
    _reset_peak()  # the peak from here on: receiving the replies and aggregating them
    elems = int(model_mb * 1e6 / 4 / ARRAYS_PER_MODEL)
    rng = np.random.default_rng(0)
    replies = []
    for i in range(n):
        state = {f"layer{k}": rng.standard_normal(elems, dtype=np.float32)
                 for k in range(ARRAYS_PER_MODEL)}
        rec = RecordDict({"arrays": to_record(state, "float32"),
                          "metrics": MetricRecord({"num-examples": 100 + i})})
        replies.append(rec)
        del state
    held_kb = _status_kb("VmRSS")
    start = time.perf_counter()
    if path == "app":
        states = [from_record(next(iter(r.array_records.values()))) for r in replies]
        out: Any = weighted_mean(states, [100.0 + i for i in range(n)])
        del states
    else:
        out = aggregate_arrayrecords(replies, "num-examples")
    elapsed = time.perf_counter() - start
    peak_kb = _status_kb("VmHWM")
    assert isinstance(out, dict | ArrayRecord)
    model_kb = model_mb * 1e6 / 1024
    return {
        "path": path, "participants": n, "model_mb": model_mb,
        "baseline_rss_mb": round(baseline_kb * 1024 / 1e6, 1),
        "replies_rss_copies": round((held_kb - baseline_kb) / model_kb, 2),
        "held_copies": round((peak_kb - baseline_kb) / model_kb, 2),
        "strategy_copies": round((peak_kb - baseline_kb) / model_kb - n, 2),
        "aggregate_s": round(elapsed, 4),
        "aggregate_s_per_mb": round(elapsed / (n * model_mb), 6),
    }


def _fit(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares ``held_copies = per_participant * N + strategy`` over the runs."""
    import numpy as np

    n = np.array([r["participants"] for r in rows], dtype=float)
    y = np.array([r["held_copies"] for r in rows], dtype=float)
    if len(set(n)) < 2:
        return {"per_participant_copies": float("nan"), "strategy_copies": float("nan")}
    slope, intercept = np.polyfit(n, y, 1)
    return {"per_participant_copies": round(float(slope), 3),
            "strategy_copies": round(float(intercept), 3),
            "max_residual_copies": round(float(np.abs(y - (slope * n + intercept)).max()), 3)}


def main(argv: list[str] | None = None) -> int:
    """Run every (path, N, M) in its own process and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", default="2,4,8")
    parser.add_argument("--model-mb", default="26,100")
    parser.add_argument("--child", nargs=3, metavar=("N", "MB", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        n, mb, path = args.child
        print(json.dumps(child(int(n), float(mb), path)))
        return 0
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    rows = []
    for path in ("app", "flwr"):
        for n in (int(x) for x in args.participants.split(",")):
            for mb in (float(x) for x in args.model_mb.split(",")):
                done = subprocess.run([sys.executable, __file__, "--child", str(n), str(mb),
                                       path], env=env, capture_output=True, text=True,
                                      check=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary: dict[str, Any] = {
        "baseline_rss_mb_max": max(r["baseline_rss_mb"] for r in rows),
        "threads": 1,
        "machine": f"{os.cpu_count()} cores, shared with other processes",
    }
    for path in ("app", "flwr"):
        mine = [r for r in rows if r["path"] == path]
        summary[path] = {**_fit(mine),
                         "aggregate_s_per_mb_max": max(r["aggregate_s_per_mb"] for r in mine)}
    print(json.dumps({"runs": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
