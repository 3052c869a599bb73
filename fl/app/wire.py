"""Model arrays on the wire: sent as the run's ``wire-dtype``, restored to float32 on receipt.

Training and aggregation always run in float32; only the copy in a message is float16 when
``wire-dtype = float16`` (``fl/app/protocol.py`` declares the bytes). Also the weighted mean the
strategy aggregates with. No torch import: the ServerApp and the ClientApp both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from fl.app.protocol import WIRE_DTYPES

State = dict[str, np.ndarray]
TRAIN_DTYPE = np.float32
# A float16 array's largest magnitude on the wire (float16 reaches 65504; normal from 6.1e-5).
F16_PEAK = 2.0**14
SCALE_SUFFIX = "@scale"


def to_record(state: Mapping[str, np.ndarray], wire_dtype: str) -> ArrayRecord:
    """An ArrayRecord of ``state`` with floating arrays cast to ``wire_dtype``.

    A float16 array travels scaled so its largest magnitude is :data:`F16_PEAK`, with the
    float32 scale as a 0-d array ``<name><SCALE_SUFFIX>``: an update's small values keep
    float16's three digits instead of falling into its subnormal range (below 6e-5).
    """
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire dtype '{wire_dtype}' is not one of {sorted(WIRE_DTYPES)}")
    record = ArrayRecord()
    for name, arr in state.items():
        if np.issubdtype(arr.dtype, np.floating) and wire_dtype == "float16":
            peak = float(np.abs(arr).max()) if arr.size else 0.0
            scale = np.float32(peak / F16_PEAK if peak > 0 and np.isfinite(peak) else 1.0)
            record[name + SCALE_SUFFIX] = Array.from_numpy_ndarray(np.asarray(scale))
            arr = (arr.astype(np.float32) / scale).astype(np.float16)
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(wire_dtype, copy=False)
        record[name] = Array.from_numpy_ndarray(np.ascontiguousarray(arr))
    return record


def from_record(record: ArrayRecord) -> State:
    """The arrays of a received record, floating ones restored to float32 (order kept)."""
    out: State = {}
    scales = {k[: -len(SCALE_SUFFIX)]: float(v.numpy()) for k, v in record.items()
              if k.endswith(SCALE_SUFFIX)}
    for name, array in record.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        arr = array.numpy()
        if np.issubdtype(arr.dtype, np.floating) and arr.dtype != TRAIN_DTYPE:
            arr = arr.astype(TRAIN_DTYPE)
        if name in scales:
            arr = arr * TRAIN_DTYPE(scales[name])
        out[name] = arr
    return out


def weighted_mean(states: Sequence[State], weights: Sequence[float]) -> State:
    """FedAvg: the example-weighted mean of each array, accumulated in float64.

    Raises:
        ValueError: No states, a total weight of 0, or states with different keys or shapes.
    """
    if not states:
        raise ValueError("no updates to aggregate")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("the updates' example counts sum to 0")
    names = list(states[0])
    out: State = {}
    for name in names:
        first = states[0][name]
        acc = np.zeros(first.shape, dtype=np.float64)
        for state, weight in zip(states, weights, strict=True):
            arr = state.get(name)
            if arr is None or arr.shape != first.shape:
                raise ValueError(f"update array '{name}' is missing or has another shape")
            acc += arr.astype(np.float64) * (float(weight) / total)
        out[name] = acc.astype(first.dtype)
    return out
