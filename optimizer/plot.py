"""Plot a plan: the 3-objective front (cost vs latency, coloured by emissions), picks, baseline.

matplotlib is imported inside :func:`plot_plan` (with the non-interactive Agg backend).
"""

from __future__ import annotations

from pathlib import Path

from fedcloud.core.errors import PlanError
from optimizer.result import PlanResult


def plot_plan(result: PlanResult, path: str | Path) -> Path:
    """Write a PNG of ``result`` to ``path`` and return the path.

    Raises:
        PlanError: The file cannot be written (names the path and the reason).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    cur = result.currency
    fig, ax = plt.subplots(figsize=(9, 5.5))
    front = sorted(result.front, key=lambda p: p.objectives.cost_local)
    if front:
        co2 = [(p.objectives.co2e_kg or 0.0) * 1000.0 for p in front]
        dots = ax.scatter([p.objectives.cost_local for p in front],
                          [p.objectives.latency_ms for p in front], c=co2, cmap="viridis",
                          s=50, edgecolors="black", linewidths=0.5, zorder=3,
                          label=f"Pareto front, 3 objectives ({len(front)} points, "
                                f"{result.method})")
        fig.colorbar(dots, ax=ax, label="job emissions (g CO2e)")
    markers = ["o", "s", "D", "^", "v", "P", "*"]
    for k, c in enumerate(result.choices):
        o = c.point.objectives
        w = ":".join(f"{x:g}" for x in c.weights)
        ax.scatter([o.cost_local], [o.latency_ms], s=160, facecolors="none",
                   edgecolors=f"C{k + 1}", linewidths=2, marker=markers[k % len(markers)],
                   zorder=4, label=f"weight {w}: {c.point.choice.label}")
    if result.baseline is not None:
        o = result.baseline.objectives
        ax.scatter([o.cost_local], [o.latency_ms], marker="X", s=140, color="black", zorder=5,
                   label=f"baseline: {result.baseline.choice.label}")
    if result.pinned:
        ax.scatter([result.objectives.cost_local], [result.objectives.latency_ms], marker="*",
                   s=220, color="gold", edgecolors="black", zorder=6,
                   label=f"pinned: {result.choice.label}")
    ax.axhline(result.max_latency_ms, color="grey", linestyle="--", linewidth=1)
    xs = [p.objectives.cost_local for p in front]
    if result.baseline is not None:
        xs.append(result.baseline.objectives.cost_local)
    if xs and result.max_cost <= 3 * max(xs):
        ax.axvline(result.max_cost, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"job cost ({cur})")
    ax.set_ylabel("largest RTT to a participant (ms)")
    co2_limit = f", {result.max_co2e_kg:g} kg CO2e" if result.max_co2e_kg else ""
    ax.set_title(f"Aggregator placement: limits {result.max_cost:,.0f} {cur}, "
                 f"{result.max_latency_ms:g} ms{co2_limit}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise PlanError(f"cannot write the plot to {out}: {exc.strerror or exc}.",
                        "give --plot a writable path ending in .png.") from None
    finally:
        plt.close(fig)
    return out
