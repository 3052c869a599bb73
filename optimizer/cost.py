"""Job time and cost of running the aggregator in one region (vectorised over regions).

Synchronous FedAvg waits for the slowest participant every round, so a round lasts

    round_s = roundTrainS + max over participants of
              (MODEL_TRANSFERS_PER_ROUND * modelMb * 8 / bandwidthMbps + rttsPerRound * rtt_s)

and the job is billed for ``setupHours + rounds * round_s / 3600`` hours at the VM's on-demand
price. Egress: the aggregator sends the global model to every participant twice per round (the
train message and the evaluate message of Flower's FedAvg); updates coming back are ingress,
which none of the three clouds charges. Hence the cost

    cost_usd = price_usd_per_hour * job_hours
             + modelMb / 1000 * MODEL_DOWNLOADS_PER_ROUND * participants * rounds * egressUsdPerGb

which is the issue's "model size x 2 x participants x rounds x egress price".
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
