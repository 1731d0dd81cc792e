"""eval.png: eval results as grouped bars, drawn like loss.png (train.outputs.plot_losses):
matplotlib on the Agg backend, one figure, saved beside the results."""

from __future__ import annotations

import os
from pathlib import Path

from tailor.evaluate.report import METRICS


def plot_eval(conditions: list[dict], path: str | Path) -> Path:
    """Left: exact / contains (/ judge) in % with one bar per condition; right: reference loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(c["summary"].get(m) is not None for c in conditions)]
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(9, 4), dpi=100, gridspec_kw={"width_ratios": [3, 1.4]})
    width = 0.8 / max(len(conditions), 1)
    for i, c in enumerate(conditions):
        xs = [m + (i - (len(conditions) - 1) / 2) * width for m in range(len(metrics))]
        values = [100 * (c["summary"].get(m) or 0.0) for m in metrics]
        bars = ax.bar(xs, values, width, label=c["name"], color=f"C{i}")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
        loss = c["summary"].get("ref_loss")
        ax_loss.bar([i], [loss or 0.0], 0.8, color=f"C{i}")
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("% of questions")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax_loss.set_xticks(range(len(conditions)), [c["name"] for c in conditions], rotation=30, ha="right",
                       fontsize=8)
    ax_loss.set_ylabel("reference answer loss (lower is better)")
    ax_loss.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # atomic: never half a picture
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
