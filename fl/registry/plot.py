"""Model Manager: a run's global metrics per round drawn as one PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

from fedcloud.core.errors import RegistryError
from fedcloud.core.files import write_atomic_with
from fl.app.records import METRICS
from fl.registry.recommend import best_round

if TYPE_CHECKING:
    from fl.registry.store import MlflowRoundStore, RunInfo


def plot_run(store: MlflowRoundStore, out: str | Path, run_id: str | None = None) -> Path:
    """Draw the global metrics per round of a run (default the newest) to a PNG file.

    The round aliased ``best`` is marked when it belongs to this run.

    Raises:
        RegistryError: Unknown run, or a run without rounds.
    """
    info = store.run(run_id)
    if not info.rounds:
        raise RegistryError(f"run {info.run_id} has no recorded rounds to plot.",
                            "pick a run with rounds (fedcloud models list).")
    best: int | None = None
    with contextlib.suppress(RegistryError):
        best_run, chosen, _, _ = best_round(store)
        if best_run.run_id == info.run_id:
            best = chosen.server_round
    return plot_rounds(info, Path(out), best)


def plot_rounds(info: RunInfo, out: Path, best_round: int | None = None) -> Path:
    """Write ``out`` (PNG): loss, and accuracy/precision/recall/F1, per round of ``info``.

    Args:
        info: The run and its rounds.
        out: The PNG file to write (atomically).
        best_round: The round aliased ``best``, marked with a vertical line when given.

    Raises:
        RegistryError: ``out`` does not end in ``.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.server_round for r in info.rounds]
    fig, (ax_loss, ax_q) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    try:
        ax_loss.plot(xs, [r.metrics.get("loss", math.nan) for r in info.rounds], marker="o")
        ax_loss.set(title="loss", xlabel="round")
        for name in METRICS[1:]:
            ax_q.plot(xs, [r.metrics.get(name, math.nan) for r in info.rounds], marker="o",
                      label=name)
        ax_q.set(title="global metrics", xlabel="round", ylim=(0.0, 1.02))
        for ax in (ax_loss, ax_q):
            ax.set_xticks(xs)
            ax.grid(alpha=0.3)
            if best_round is not None:
                ax.axvline(best_round, color="grey", linestyle="--", label="best")
        ax_q.legend(loc="lower right")
        fig.suptitle(f"{info.run_name or info.run_id} ({info.run_id[:8]})")
        if out.suffix.lower() != ".png":
            raise RegistryError(f"{out}: the plot is written as PNG.", "use --out FILE.png.")
        write_atomic_with(out, lambda p: fig.savefig(p, format="png", dpi=100))
    finally:
        plt.close(fig)
    return out
