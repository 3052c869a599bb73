"""Models, local train/test loops and metrics: the ML half of the Flower app.

No Flower, SSH or configuration import (Flower's ``quickstart-pytorch`` layout): the models
``covid_cnn`` and ``cifar_cnn`` (:func:`build_model`), and metrics from the summed confusion
matrix (:func:`metrics_from_confusion`). See fl/README.md, "Models and metrics".
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fl.app.errors import AppError

HIDDEN_UNITS = 64


class CovidCNN(nn.Module):
    """Three conv blocks and two dense layers for ``1 x S x S`` grayscale X-rays."""

    def __init__(self, width: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        if image_size % 8:
            raise AppError(f"covid_cnn needs an image size divisible by 8, got {image_size}.",
                           "set training.imageSize to a multiple of 8.")
        chans = [1, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        flat = 4 * width * (image_size // 8) ** 2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, HIDDEN_UNITS), nn.ReLU(),
                                        nn.Linear(HIDDEN_UNITS, num_classes))
        # He initialisation: PyTorch's default (kaiming_uniform with a=sqrt(5)) leaves a narrow
        # ReLU net on a long plateau, which costs federated rounds.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.classifier(self.features(x))


class CifarCNN(nn.Module):
    """Flower quickstart-pytorch's CIFAR-10 CNN (LeNet-style)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """Build a model from its spec.

    Args:
        spec: ``model`` (``covid_cnn`` | ``cifar_cnn``), ``width``, ``image_size``,
            ``num_classes`` (the run params the ServerApp records).

    Raises:
        AppError: Unknown model or a spec value that does not fit it.
    """
    try:
        name = str(spec["model"])
        num_classes = int(spec["num_classes"])
        if name == "covid_cnn":
            return CovidCNN(int(spec["width"]), int(spec["image_size"]), num_classes)
        if name == "cifar_cnn":
            if int(spec.get("image_size", 32)) != 32:
                raise AppError("cifar_cnn takes 32 x 32 images.",
                               "set training.imageSize to 32.")
            return CifarCNN(num_classes)
    except (KeyError, TypeError, ValueError) as exc:
        raise AppError(f"model spec {dict(spec)} is incomplete or malformed ({exc}).",
                       "give model, width, image_size and num_classes.") from None
    raise AppError(f"unknown model '{name}'.", "use covid_cnn or cifar_cnn.")


def model_bytes(model: nn.Module) -> int:
    """Return the size of the model's state (parameters and buffers) in bytes."""
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> Iterable[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
          learning_rate: float, seed: int = 0) -> dict[str, float]:
    """Train ``model`` in place with SGD (momentum 0.9) on one participant's data.

    Returns:
        ``train_loss`` (mean over the last epoch), ``num_examples``, ``train_time_s`` (pure
        compute time of this loop, for the overhead figures).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = int(y.shape[0])
    if n == 0:
        return {"train_loss": 0.0, "num_examples": 0, "train_time_s": 0.0}
    started = time.perf_counter()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    total = 0.0
    for _ in range(epochs):
        total = 0.0
        for idx in _batches(n, batch_size, rng):
            bi = torch.from_numpy(idx)
            opt.zero_grad()
            loss = loss_fn(model(xt[bi]), yt[bi])
            loss.backward()
            opt.step()
            total += float(loss.item()) * len(idx)
    return {"train_loss": total / n, "num_examples": n,
            "train_time_s": time.perf_counter() - started}


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, num_classes: int,
             batch_size: int = 64) -> tuple[float, np.ndarray]:
    """Evaluate ``model`` on one participant's test data.

    Returns:
        The mean cross-entropy loss and the ``num_classes x num_classes`` confusion matrix
        (rows = true class, columns = predicted class).
    """
    model.eval()
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    n = int(y.shape[0])
    if n == 0:
        return 0.0, cm
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    total = 0.0
    with torch.no_grad():
        for idx in _batches(n, batch_size, None):
            bi = torch.from_numpy(idx)
            logits = model(xt[bi])
            total += float(loss_fn(logits, yt[bi]).item())
            pred = logits.argmax(dim=1).numpy()
            np.add.at(cm, (y[idx], pred), 1)
    return total / n, cm


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 from a confusion matrix.

    Macro averages run over the classes present in the truth or the predictions (as
    scikit-learn does with ``labels=None``); a class with no predictions has precision 0.

    Args:
        cm: Square matrix, rows = true class, columns = predicted class.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    if total == 0:
        return {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = (support + predicted) > 0
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / total),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
    }


def aggregate_evaluations(replies: Iterable[tuple[int, float, np.ndarray]]) -> dict[str, Any]:
    """Combine per-client evaluations into the global metrics.

    Args:
        replies: ``(num_examples, mean_loss, confusion_matrix)`` per client.

    Returns:
        ``loss`` (example-weighted mean), the four :func:`metrics_from_confusion` figures of
        the summed matrix, ``num_examples`` and ``confusion`` (the summed matrix as nested
        lists).
    """
    total_cm: np.ndarray | None = None
    examples = 0
    loss_sum = 0.0
    for num, loss, cm in replies:
        cm = np.asarray(cm, dtype=np.int64)
        total_cm = cm.copy() if total_cm is None else total_cm + cm
        examples += int(num)
        loss_sum += float(loss) * int(num)
    if total_cm is None:
        raise AppError("no evaluation replies to aggregate.",
                       "check that the participants' SuperNodes are online.")
    out: dict[str, Any] = {"loss": loss_sum / examples if examples else 0.0}
    out.update(metrics_from_confusion(total_cm))
    out["num_examples"] = examples
    out["confusion"] = total_cm.tolist()
    return out
