"""The study's picture: losses on one time axis (top) and the speed bars (bottom).

matplotlib is imported here only, when a picture is drawn, with the headless Agg backend.
"""

from __future__ import annotations

import numpy as np

__all__ = ["draw"]


def _positions(num_epochs: int, num_batches: int) -> np.ndarray:
    """x of batch b of epoch e: e + (b + 1) / num_batches, so epoch e ends at x = e + 1."""
    return np.arange(num_epochs)[:, None] + (np.arange(num_batches)[None, :] + 1) / num_batches


def _loss_panel(ax, results: dict) -> None:
    batches, epochs = results["batches"], results["epochs"]
    loop, running = np.asarray(batches["loop_loss"]), np.asarray(batches["fit_running_mean"])
    x = _positions(*loop.shape)
    ends = np.arange(1, len(epochs) + 1)
    dense = loop.size > 2000                  # seed2: thousands of batches make a band, not dots
    ax.plot(x.ravel(), loop.ravel(), color="0.7", lw=0.3 if dense else 0.6, marker=None if dense else ".",
            ms=2, label="train_on_batch: raw loss of each batch")
    for e in range(len(epochs)):
        ax.plot(x[e], running[e], color="tab:blue", lw=1.6,
                label="fit: running mean within the epoch (progress bar)" if e == 0 else None)
    ax.plot(ends, [r["loop_mean"] for r in epochs], "x", color="tab:gray", ms=7, mew=1.6,
            label="np.mean of the train_on_batch losses")
    ax.plot(ends, [r["fit"] for r in epochs], "o", color="tab:blue", ms=6, label="fit: history['loss']")
    ax.plot(ends, [r["evaluate"] for r in epochs], "s", color="tab:orange", ms=6,
            label="evaluate at the end-of-epoch weights")
    ax.set_xlim(0, len(epochs) + 0.05)
    marks = [r[k] for r in epochs for k in ("loop_mean", "fit", "evaluate")]
    low, high = np.percentile(loop, [0.5, 99.5] if dense else [0, 100])
    low, high = min(low, *marks), max(high, *marks)
    pad = 0.05 * (high - low)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({results['config']['loss']})")
    ax.set_title("Losses: raw batches vs what fit and evaluate report", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)


def _speed_panel(ax, results: dict) -> None:
    rows = results["speed"]["rows"]
    labels = [r["label"] for r in rows][::-1]
    values = [r["steps_per_s"] for r in rows][::-1]
    colors = ["tab:blue", "tab:cyan", "tab:olive", "tab:gray"][:len(rows)][::-1]
    bars = ax.barh(labels, values, color=colors)
    for bar, row in zip(bars, rows[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f"  {row['steps_per_s']:,.0f} steps/s, {row['us_per_step']:.1f} us/step",
                va="center", fontsize=8)
    ax.set_xlim(0, max(values) * 1.45)
    ax.set_xlabel("optimizer steps per second (median epoch after a warm-up epoch; higher is faster)")
    ax.set_title("Speed: the same training, four ways", fontsize=11)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)


def draw(results: dict, path) -> None:
    """Write the two-panel PNG to `path` (about 1100 x 900 pixels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg   # headless, no pyplot state
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, height_ratios=[2.2, 1])
    _loss_panel(top, results)
    _speed_panel(bottom, results)
    config = results["config"]
    figure.suptitle(f"batchfit compare ({config['preset']}): {config['samples']} samples, batch "
                    f"{config['batch_size']}, {config['epochs']} epochs\n{config['model']}", fontsize=12)
    figure.savefig(path)
