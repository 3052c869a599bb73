"""Model arrays on the wire: sent as the run's ``wire-dtype``, restored to float32 on receipt.

Training and aggregation always run in float32; only the copy in a message is float16 when
``wire-dtype = float16`` (``fl/app/protocol.py`` declares the bytes); then a node that holds
the last global model gets only the step from it (:class:`Copies`). Also the weighted mean the
strategy aggregates with. No torch import: the ServerApp and the ClientApp both use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fl.app.protocol import WIRE_DTYPES

State = dict[str, np.ndarray]
TRAIN_DTYPE = np.float32
# A float16 array's largest magnitude on the wire (float16 reaches 65504; normal from 6.1e-5).
F16_PEAK = 2.0**14
SCALE_SUFFIX = "@scale"
# Below this peak an array travels unscaled, as zeros (a smaller scale would be subnormal in
# float32, and a copy of the copy would not be the same).
F16_LEAST_PEAK = 1e-30


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
            scale = np.float32(peak / F16_PEAK if F16_LEAST_PEAK < peak < np.inf else 1.0)
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


# Config keys of a message's model (``fl/app/strategy.py`` -> ``fl/app/client_app.py``): the
# digest of the model it carries, and, when it carries only the step from the model a node
# already holds, that model's digest.
MODEL_KEY, BASE_KEY = "fedcloud-model", "fedcloud-base"


def digest(state: Mapping[str, np.ndarray]) -> str:
    """A short digest of a model's names, dtypes, shapes and bytes (equal models, equal digest)."""
    h = hashlib.blake2b(digest_size=16)
    for name, arr in state.items():
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def on_grid(state: Mapping[str, np.ndarray], wire_dtype: str) -> State:
    """``state`` as a copy on the wire restores it: float16 sends the result exactly."""
    return from_record(to_record(state, wire_dtype)) if wire_dtype == "float16" else dict(state)


def add_step(base: Mapping[str, np.ndarray], step: Mapping[str, np.ndarray]) -> State:
    """``base + step`` in each array's dtype: the ServerApp and every node compute it alike."""
    return {k: (base[k] + step[k]).astype(base[k].dtype) for k in base}


class Copies:
    """What each node holds of the global model, so a float16 run sends only each step.

    Both sides keep the global model exactly: each round's step is put on float16's grid
    (:func:`on_grid`) before the ServerApp adds it, so ``held + step`` on a node is bitwise the
    ServerApp's model (checked by its digest). A node that holds no copy (a run's first
    round, a resumed run, a node lost and back) gets the whole model: in float16 if that is
    exact (a fresh run starts from a model on the grid), else in float32. float32 runs always
    send the whole model.

    Args:
        wire_dtype: The run's ``wire-dtype``.
    """

    def __init__(self, wire_dtype: str) -> None:
        self.wire_dtype = wire_dtype
        self.held: dict[int, str] = {}
        self.model: State = {}
        self.digest = self.base = ""
        self.exact = False
        self._step: State | None = None
        self._records: dict[str, ArrayRecord] = {}
        self._contents: dict[tuple[str, tuple[tuple[str, int | str], ...]], RecordDict] = {}

    def send(self, model: State, step: State | None = None, exact: bool = False) -> None:
        """The next messages carry ``model``; ``step``: ``model`` minus the last one sent.

        ``exact``: ``model`` is on the wire grid (a copy in ``wire_dtype`` restores it).
        """
        if model is self.model:
            return
        self.base = self.digest if step is not None else ""
        self.model, self._step, self.exact, self._records = model, step, exact, {}
        self._contents = {}
        self.digest = digest(model) if self.wire_dtype == "float16" else ""

    def content(self, node: int, config: Mapping[str, int | str]) -> RecordDict:
        """The message content for ``node``: its arrays and ``config`` plus what it holds.

        Nodes sent the same arrays get one RecordDict: the SuperLink stores it once.
        """
        if self.wire_dtype != "float16":
            kind, held = "model", {}
        elif self._step is not None and self.base and self.held.get(node) == self.base:
            kind, held = "step", {MODEL_KEY: self.digest, BASE_KEY: self.base}
        else:
            kind, held = "model", {MODEL_KEY: self.digest}
        key = (kind, tuple(sorted(config.items())))
        if key not in self._contents:
            self._contents[key] = RecordDict({"arrays": self._record(kind), "config":
                                              ConfigRecord({**config, **held})})
        return self._contents[key]

    def answered(self, nodes: Iterable[int], missed: Iterable[int] = ()) -> None:
        """Nodes that answered a message carrying the model hold it; those missed, unknown."""
        for node in nodes:
            self.held[node] = self.digest
        for node in missed:
            self.held.pop(node, None)

    def _record(self, kind: str) -> ArrayRecord:
        if kind not in self._records:
            if kind == "step" and self._step is not None:
                self._records[kind] = to_record(self._step, "float16")
            elif self.wire_dtype == "float16" and not self.exact:
                self._records[kind] = to_record(self.model, "float32")
            else:
                self._records[kind] = to_record(self.model, self.wire_dtype)
        return self._records[kind]
