"""Job time, cost, memory need and emissions of the aggregator on each option (vectorised).

The bytes a run moves come from the app's declaration (``cm.traffic``, ``fl/app/protocol.py``);
a round lasts the local training plus the slower of the participant's link and the aggregator
NIC's fan-out, the round trips and the aggregation; emissions follow the Cloud Carbon Footprint
method. Formulas and sources: optimizer/README.md, "Cost model" and "Emissions model".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from optimizer.request import CostModel

BYTES_PER_MB = 1e6
BYTES_PER_GB = 1e9
BYTES_PER_GIB = 2.0 ** 30
SECONDS_PER_HOUR = 3600.0
HOURS_PER_MONTH = 730.0  # the providers' monthly billing convention (24 x 365 / 12)
# Cloud Carbon Footprint coefficients (shared/data/carbon/README.md).
MEMORY_KWH_PER_GB_HOUR = 0.000392
NETWORK_KWH_PER_GB = 0.001


def copy_bytes(cm: CostModel) -> float:
    """Wire bytes of one model copy (``modelMb`` float32 bytes x the wire dtype's ratio)."""
    return cm.traffic.copy_bytes(cm.model_mb * BYTES_PER_MB)


def job_bytes(n_participants: int, cm: CostModel) -> tuple[float, float]:
    """``(downloads, uploads)`` bytes of the job: per round and once per run (final evaluation)."""
    return cm.traffic.job_bytes(cm.model_mb * BYTES_PER_MB, n_participants, cm.rounds)


def round_bytes(n_participants: int, cm: CostModel) -> tuple[float, float]:
    """``(downloads, uploads)`` bytes of one round (what a spot interruption repeats)."""
    model = cm.model_mb * BYTES_PER_MB
    more = cm.traffic.job_bytes(model, n_participants, 1)
    less = cm.traffic.job_bytes(model, n_participants, 0)
    return more[0] - less[0], more[1] - less[1]


def expected_interruptions(hours: np.ndarray, spot: np.ndarray, cm: CostModel) -> np.ndarray:
    """Expected spot interruptions of each option: rate x job hours on spot, 0 on demand."""
    return np.asarray(np.where(spot, cm.spot_interruptions_per_hour * hours, 0.0))


def interruption_hours(interruptions: np.ndarray, round_s: np.ndarray,
                       cm: CostModel) -> np.ndarray:
    """Expected extra hours: per interruption, the resume overhead and the round lost."""
    return np.asarray(interruptions * (cm.resume_overhead_s + round_s) / SECONDS_PER_HOUR)


def egress_gb(n_participants: int, cm: CostModel) -> float:
    """Return the GB the aggregator sends to the participants over the job (the downloads)."""
    return job_bytes(n_participants, cm)[0] / BYTES_PER_GB


def egress_usd(cloud: str, n_participants: int, cm: CostModel) -> float:
    """Return the egress charge of the job in USD when the aggregator is in ``cloud``."""
    return egress_gb(n_participants, cm) * cm.egress_usd_per_gb[cloud]


def memory_need_gib(n_participants: int, cm: CostModel, measured: Mapping[str, float]) -> float:
    """The ServerApp's peak memory for one round, GiB (measured constants, ``aggregator.csv``).

    ``baseline + model bytes (float32, as aggregated) x (copies per participant x N +
    strategy copies)``.
    """
    model = cm.model_mb * BYTES_PER_MB
    copies = measured["copies_per_participant"] * n_participants + measured["strategy_copies"]
    return (measured["serverapp_baseline_mb"] * BYTES_PER_MB + model * copies) / BYTES_PER_GIB


def _exchange_seconds(copies: float, n: int, cm: CostModel, nic_gbps: np.ndarray) -> np.ndarray:
    """Transfer time of ``copies`` per participant: the slower of a link and the VM's NIC."""
    bits = copies * copy_bytes(cm) * 8.0
    link = bits / (cm.bandwidth_mbps * 1e6)
    fanout = n * bits / (np.asarray(nic_gbps, dtype=float) * 1e9)
    return np.asarray(np.maximum(link, fanout))


def round_seconds(rtt_ms: np.ndarray, region_of: np.ndarray, nic_gbps: np.ndarray,
                  cm: CostModel, aggregate_s_per_mb: float) -> np.ndarray:
    """Return the duration of one round for each option.

    Args:
        rtt_ms: ``[participants, regions]`` RTT matrix.
        region_of: Option -> column of ``rtt_ms``.
        nic_gbps: Each option's published network bandwidth, Gbit/s.
        cm: The cost model.
        aggregate_s_per_mb: Aggregation time per MB of updates (measured, one thread).
    """
    n = rtt_ms.shape[0]
    # The stack's round trips of the model exchange plus those of the secure key exchanges.
    rtts = cm.rtts_per_round + cm.traffic.extra_rtts_per_round
    rtt_s = rtts * rtt_ms.max(axis=0) / 1000.0
    transfer = _exchange_seconds(cm.traffic.round_copies(), n, cm, nic_gbps)
    aggregate = n * cm.model_mb * aggregate_s_per_mb
    return np.asarray(cm.round_train_s + transfer + rtt_s[region_of] + aggregate)


def job_hours(rtt_ms: np.ndarray, region_of: np.ndarray, nic_gbps: np.ndarray, cm: CostModel,
              aggregate_s_per_mb: float) -> np.ndarray:
    """Return the billed hours of the job for each option (rounds + the final evaluation)."""
    n = rtt_ms.shape[0]
    round_s = round_seconds(rtt_ms, region_of, nic_gbps, cm, aggregate_s_per_mb)
    t = cm.traffic
    run_copies = t.downloads_per_run + t.uploads_per_run
    # The final evaluation's round trips scale with the copies it moves against a round's.
    # Plus a secure run's key set-up of its first round, once.
    run_rtts = cm.rtts_per_round * run_copies / max(t.round_copies(), 1) + t.extra_rtts_per_run
    final_s = (_exchange_seconds(run_copies, n, cm, nic_gbps)
               + run_rtts * rtt_ms.max(axis=0)[region_of] / 1000.0)
    return np.asarray(cm.setup_hours + (cm.rounds * round_s + final_s) / SECONDS_PER_HOUR)


def job_cost_usd(price_usd_per_hour: np.ndarray, hours: np.ndarray,
                 egress: np.ndarray) -> np.ndarray:
    """Return the job's cost in USD: VM hours plus egress (all arrays broadcast)."""
    return np.asarray(price_usd_per_hour * hours + egress)


def energy_kwh(vcpus: np.ndarray, memory_gib: np.ndarray, hours: np.ndarray,
               min_watts: np.ndarray, max_watts: np.ndarray, n_participants: int,
               cm: CostModel, extra_rounds: np.ndarray | float = 0.0) -> np.ndarray:
    """Return the job's IT energy per option, kWh (before PUE): compute + memory + network.

    Compute: ``vCPU-hours x (min W + u x (max W - min W))``; memory: GB-hours x 0.000392;
    network: every byte the job moves (down and up, plus ``extra_rounds`` repeated rounds)
    x 0.001 kWh/GB.
    """
    u = cm.cpu_utilization
    compute = vcpus * hours * (min_watts + u * (max_watts - min_watts)) / 1000.0
    memory = memory_gib * (BYTES_PER_GIB / BYTES_PER_GB) * hours * MEMORY_KWH_PER_GB_HOUR
    moved = sum(job_bytes(n_participants, cm)) + extra_rounds * sum(round_bytes(n_participants, cm))
    network = moved / BYTES_PER_GB * NETWORK_KWH_PER_GB
    return np.asarray(compute + memory + network)


def co2e_kg(energy: np.ndarray, pue: np.ndarray, grid_kg_per_kwh: np.ndarray) -> np.ndarray:
    """Return the job's emissions, kg CO2e: energy x PUE x the region's grid factor."""
    return np.asarray(energy * pue * grid_kg_per_kwh)
