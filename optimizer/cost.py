"""Job time and cost of running the aggregator in one region (vectorised over regions).

A synchronous round lasts the local training plus the slowest participant's model transfers and
round trips; the job is billed at the VM's on-demand price plus the egress of the global model
(twice per round and participant). See optimizer/README.md, "Cost model".
"""

from __future__ import annotations

import numpy as np

from optimizer.request import CostModel

# Per round and participant: the global model down for training, the update up, the global model
# down again for evaluation. Two of the three leave the aggregator (billed egress).
MODEL_TRANSFERS_PER_ROUND = 3
MODEL_DOWNLOADS_PER_ROUND = 2
MB_PER_GB = 1000.0
SECONDS_PER_HOUR = 3600.0


def round_seconds(rtt_ms: np.ndarray, cm: CostModel) -> np.ndarray:
    """Return the duration of one round for each candidate region.

    Args:
        rtt_ms: ``[participants, regions]`` RTT matrix.
        cm: The cost model.
    """
    transfer_s = MODEL_TRANSFERS_PER_ROUND * cm.model_mb * 8.0 / cm.bandwidth_mbps
    per_participant = cm.round_train_s + transfer_s + cm.rtts_per_round * rtt_ms / 1000.0
    return np.asarray(per_participant.max(axis=0))


def job_hours(rtt_ms: np.ndarray, cm: CostModel) -> np.ndarray:
    """Return the billed hours of the job for each candidate region."""
    return cm.setup_hours + cm.rounds * round_seconds(rtt_ms, cm) / SECONDS_PER_HOUR


def egress_gb(n_participants: int, cm: CostModel) -> float:
    """Return the GB the aggregator sends to the participants over the job."""
    return (cm.model_mb / MB_PER_GB) * MODEL_DOWNLOADS_PER_ROUND * n_participants * cm.rounds


def egress_usd(cloud: str, n_participants: int, cm: CostModel) -> float:
    """Return the egress charge of the job in USD when the aggregator is in ``cloud``."""
    return egress_gb(n_participants, cm) * cm.egress_usd_per_gb[cloud]


def job_cost_usd(price_usd_per_hour: np.ndarray, hours: np.ndarray,
                 egress: np.ndarray) -> np.ndarray:
    """Return the job's cost in USD: VM hours plus egress (all arrays broadcast)."""
    return np.asarray(price_usd_per_hour * hours + egress)
