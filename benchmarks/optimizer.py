"""NSGA-II against the exhaustive ground truth on three objectives: hypervolume, picks, time.

Scenarios: the case study, 20 random ones with cost:latency weight pairs, 10 random ones with
three-weight vectors (half with an emissions limit), a "VM size" pair (small vs large job), and
the case study plus 3 random ones with ``aggregator.market: auto`` (spot and on demand).
``hv_ratio`` is NSGA-II's 3-objective front hypervolume over the exhaustive front's (reference:
the cost and latency limits, the emissions limit or 1.1 x the largest feasible emissions);
``same_pick``: every weight picks the same option with both methods. One JSON object is
printed (optimizer/README.md, "Benchmark"). Run: ``.venv/bin/python benchmarks/optimizer.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from fedcloud.core.config import from_mapping, load_stack
from fedcloud.core.errors import PlanError
from optimizer import PlanRequest, plan
from optimizer.catalog import CLOUDS, load_catalog
from optimizer.front import hypervolume
from optimizer.latency import model_error
from optimizer.result import PlanResult
from optimizer.space import build_space

WEIGHTS = [[9, 1], [5, 5], [1, 9], [3, 7], [7, 3]]
WEIGHTS3 = [[1, 1, 1], [6, 2, 2], [2, 6, 2], [2, 2, 6], [0, 0, 1], [9, 1]]
REPEATS = 3  # each method's time is the best of REPEATS runs (the machine is shared)


def request_of(config: Any) -> PlanRequest:
    """The optimizer's request for a stack, as both compositions build it."""
    from fedcloud.core.stack import parse
    from fedcloud.federation import plan_request

    return plan_request(parse(config))


def random_scenario(rng: random.Random, three: bool = False) -> dict[str, Any]:
    """Return the config values of one random scenario."""
    cat = load_catalog()
    regions = sorted(cat.regions)
    participants = []
    for i in range(rng.randint(2, 6)):
        cloud, region = rng.choice(regions)
        if rng.random() < 0.5:
            loc: dict[str, Any] = {"region": f"{cloud}:{region}"}
        else:
            r = cat.regions[(cloud, region)]
            loc = {"lat": round(max(-89.0, min(89.0, r.latitude_deg + rng.uniform(-4, 4))), 2),
                   "lon": round(max(-179.0, min(179.0, r.longitude_deg + rng.uniform(-4, 4))), 2)}
        participants.append({"name": f"p{i}", "location": loc})
    clouds = list(CLOUDS) if rng.random() < 0.6 else sorted(rng.sample(list(CLOUDS), 2))
    min_vcpus, min_mem = rng.choice([(2, 4), (2, 4), (2, 8), (4, 8), (4, 16), (8, 16)])
    rounds = rng.choice([10, 30, 50, 100, 200])
    limits: dict[str, Any] = {"maxCost": round(rng.uniform(1.0, 40.0), 2),
                              "maxLatencyMs": rng.choice([150, 200, 250, 300, 400])}
    if three and rng.random() < 0.5:
        limits["maxCo2eKg"] = round(rng.uniform(0.005, 0.5), 3)
    return {
        "participants": participants,
        "clouds": clouds,
        "aggregator": {"minVcpus": min_vcpus, "minMemoryGib": min_mem},
        "limits": limits,
        "weights": WEIGHTS3 if three else WEIGHTS,
        "costModel": {"rounds": rounds, "modelMb": rng.choice([5, 26, 100]),
                      "roundTrainS": rng.choice([30, 60, 120, 300])},
    }


def best_time(req: PlanRequest, method: str) -> tuple[PlanResult, float]:
    """Run ``plan`` REPEATS times; return the last result and the fastest time."""
    times, res = [], None
    for _ in range(REPEATS):
        t = time.perf_counter()
        res = plan(req, method)
        times.append(time.perf_counter() - t)
    assert res is not None
    return res, min(times)


def compare(name: str, req: PlanRequest, other_seeds: list[int]) -> dict[str, Any]:
    """Run both methods on ``req`` and compare them (and NSGA-II with ``other_seeds``)."""
    ex, ex_s = best_time(req, "exhaustive")
    ns, ns_s = best_time(req, "nsga2")
    space = build_space(req)
    co2_ref = (req.max_co2e_kg if req.max_co2e_kg is not None
               else 1.1 * float(space.co2e_kg[space.feasible].max()))
    ref = (req.max_cost_usd, req.max_latency_ms, co2_ref)

    def hv(r: PlanResult) -> float:
        f = np.array([[p.objectives.cost_usd, p.objectives.latency_ms, p.objectives.co2e_kg]
                      for p in r.front], dtype=float)
        return hypervolume(f, ref)

    hv_ex, hv_ns = hv(ex), hv(ns)
    picks_ex, picks_ns = picks(ex), picks(ns)
    seeds_ok = True
    for seed in other_seeds:
        other = plan(dataclasses.replace(req, seed=seed), "nsga2")
        seeds_ok &= hv(other) >= 0.999 * hv_ex and picks(other) == picks_ex
    return {
        "name": name,
        "hv_ratio": round(hv_ns / hv_ex, 6) if hv_ex > 0 else 1.0,
        "same_pick": picks_ex == picks_ns,
        "nsga2_s": round(ns_s, 4),
        "exhaustive_s": round(ex_s, 4),
        "candidates": ex.candidates,
        "feasible": ex.feasible,
        "front_size": len(ex.front),
        "nsga2_front_size": len(ns.front),
        "nsga2_evaluated": ns.evaluated,
        "participants": len(req.participants),
        "weights": [list(w) for w in req.weights],
        "max_co2e_kg": req.max_co2e_kg,
        "other_seeds_match": seeds_ok,
        "picks": picks_ex,
        "market": req.market,
    }


def picks(result: PlanResult) -> list[str]:
    """Each weight's pick, ``cloud:region/type`` (`` (spot)`` on the spot market)."""
    return [c.point.choice.label for c in result.choices]


def spot_scenarios(case: PlanRequest, count: int, seed: int,
                   other_seeds: list[int]) -> list[dict[str, Any]]:
    """The case study and ``count`` random scenarios with both markets (``market: auto``)."""
    rows = [compare("covid19-auto", dataclasses.replace(case, market="auto"), other_seeds)]
    rng = random.Random(seed)
    while len(rows) < 1 + count:
        values = random_scenario(rng, three=len(rows) % 2 == 0)
        values["aggregator"] = {**values["aggregator"], "market": "auto"}
        name = f"auto-{len(rows):02d}"
        try:
            rows.append(compare(name, request_of(from_mapping(name, "benchmark", values)),
                                other_seeds))
        except PlanError:  # no feasible option: draw another
            continue
    return rows


def size_scenario(other_seeds: list[int]) -> dict[str, Any]:
    """The same federation with a small and a large job: the VM size follows the job."""
    rng = random.Random(11)
    cat = load_catalog()
    regions = sorted(cat.regions)
    base: dict[str, Any] = {
        "participants": [{"name": f"p{i}", "location": {"region": f"{c}:{r}"}}
                         for i, (c, r) in enumerate(rng.sample(regions, 50))],
        "clouds": list(CLOUDS), "aggregator": {"minVcpus": 2, "minMemoryGib": 4},
        "limits": {"maxCost": 5000, "maxLatencyMs": 400}, "weights": WEIGHTS3,
        "costModel": {"rounds": 20, "roundTrainS": 120},
    }
    out: dict[str, Any] = {"rows": [], "summary": {}}
    for name, mb in (("size-50x26MB", 26), ("size-50x1GB", 1000)):
        values = {**base, "costModel": {**base["costModel"], "modelMb": mb}}
        req = request_of(from_mapping(name, "benchmark", values))
        row = compare(name, req, other_seeds)
        res = plan(req, "exhaustive")
        out["rows"].append(row)
        out["summary"][name] = {
            "memory_need_gib": round(res.memory_need_gib, 2),
            "picks": [f"{c.point.choice.label} ({c.point.choice.vcpus} vCPU, "
                      f"{c.point.choice.memory_gib:g} GiB)" for c in res.choices],
            "job_hours": [round(c.point.objectives.job_hours, 3) for c in res.choices],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7, help="seed of the random scenarios")
    parser.add_argument("--three-objective", type=int, default=10,
                        help="random scenarios with three-weight vectors")
    parser.add_argument("--spot-scenarios", type=int, default=3,
                        help="random scenarios with aggregator.market auto")
    parser.add_argument("--other-nsga2-seeds", default="2,3,4,5",
                        help="also run NSGA-II with these seeds (untimed) and check they match")
    args = parser.parse_args(argv)
    other_seeds = [int(x) for x in args.other_nsga2_seeds.split(",") if x]

    case = request_of(load_stack("covid19"))
    cold = time.perf_counter()
    plan(case, "nsga2")  # warm-up: pymoo/scipy imports and the latency calibration
    cold_s = time.perf_counter() - cold
    rows = [compare("covid19", case, other_seeds)]
    rng = random.Random(args.seed)
    skipped = 0
    total = args.scenarios + 1 + args.three_objective
    while len(rows) < total:
        three = len(rows) > args.scenarios
        values = random_scenario(rng, three)
        name = f"{'tri' if three else 'random'}-{len(rows):02d}"
        req = request_of(from_mapping(name, "benchmark", values))
        try:
            rows.append(compare(name, req, other_seeds))
        except PlanError:  # a random draw with no feasible option: draw another
            skipped += 1
    sizes = size_scenario(other_seeds)
    rows.extend(sizes["rows"])
    rows.extend(spot_scenarios(case, args.spot_scenarios, args.seed + 1, other_seeds))
    hv = [r["hv_ratio"] for r in rows]
    out = {
        "scenarios": rows,
        "vm_size": sizes["summary"],
        "summary": {
            "scenarios": len(rows),
            "three_weight_scenarios": sum(any(len(w) == 3 for w in r["weights"]) for r in rows),
            "market_auto_scenarios": sum(r["market"] == "auto" for r in rows),
            "min_front_size": min(r["front_size"] for r in rows),
            "max_front_size": max(r["front_size"] for r in rows),
            "covid19_front_size": rows[0]["front_size"],
            "min_hv_ratio": min(hv),
            "all_hv_ratio_ge_0.999": all(h >= 0.999 for h in hv),
            "all_same_pick": all(r["same_pick"] for r in rows),
            "other_nsga2_seeds": other_seeds,
            "all_other_seeds_match": all(r["other_seeds_match"] for r in rows),
            "max_nsga2_s": max(r["nsga2_s"] for r in rows),
            "max_exhaustive_s": max(r["exhaustive_s"] for r in rows),
            "first_plan_cold_s": round(cold_s, 3),
            "infeasible_random_draws_skipped": skipped,
            "optimizer": {"popSize": case.pop_size, "generations": case.generations,
                          "seed": case.seed},
        },
        "latency_model": model_error().to_dict(),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
