"""The study's tables as Markdown (printed as they are, and pasted into report.md)."""

from __future__ import annotations

__all__ = ["PART_NAMES", "chain_table", "gap_table", "loss_table", "markdown_table",
           "speed_reasons", "speed_table", "summary"]

PART_NAMES = {
    "batch_order": "batch order",
    "loop_rounding": "float rounding",
    "partial_batch_weighting": "partial-last-batch weighting",
    "training_mode_layers": "training-mode layers (dropout)",
    "weights_moving": "weights moving during the epoch",
    "replay_rounding": "float rounding",
}


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A pipe table; numeric-looking columns right-aligned."""
    numeric = [all(_is_number(r[i]) for r in rows) for i in range(len(headers))]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if n else c.ljust(w)
                                 for c, w, n in zip(cells, widths, numeric)) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2))
                          for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").replace("x", "").replace("+", ""))
        return True
    except ValueError:
        return False


def _f(value: float) -> str:
    return f"{value:.6f}"


def _signed(value: float) -> str:
    return f"{value:+.6f}" if abs(value) >= 5e-7 else "0.000000"


def loss_table(results: dict) -> str:
    """Per epoch: fit's figure, the loop's np.mean / weighted mean / spread, evaluate."""
    headers = ["epoch", "fit reports", "train_on_batch np.mean", "weighted by n_b",
               "batch min", "batch max", "batch std", "evaluate (end of epoch)"]
    rows = [[str(r["epoch"] + 1), _f(r["fit"]), _f(r["loop_mean"]), _f(r["loop_weighted_mean"]),
             _f(r["loop_min"]), _f(r["loop_max"]), _f(r["loop_std"]), _f(r["evaluate"])]
            for r in results["epochs"]]
    return markdown_table(headers, rows)


def gap_table(results: dict, gap: str = "loop_mean_minus_fit") -> str:
    """Per epoch: one gap from fit's figure and the parts that add up to it."""
    if gap == "loop_mean_minus_fit":
        headers = ["epoch", "np.mean - fit", "= batch order", "+ rounding", "+ last-batch weighting"]
        keys = ("batch_order", "loop_rounding", "partial_batch_weighting")
    else:
        headers = ["epoch", "evaluate - fit", "= training-mode layers", "+ weights moving", "+ rounding"]
        keys = ("training_mode_layers", "weights_moving", "replay_rounding")
    rows = [[str(r["epoch"] + 1), _signed(r["gaps"][gap]), *(_signed(r["parts"][k]) for k in keys)]
            for r in results["epochs"]]
    return markdown_table(headers, rows)


def _chain_rows(r: dict) -> list[list[str]]:
    steps = [("F: fit reports (history['loss'])", "fit", None),
             ("P: F on the loop's batches: fit(shuffle=False)", "fit_unshuffled", "batch order"),
             ("W: P as train_on_batch steps (the loop), by n_b", "loop_weighted_mean", "float rounding"),
             ("U: W with equal weight per batch: np.mean (yours)", "loop_mean", "partial-last-batch weighting"),
             ("F: fit reports", "fit", None),
             ("R: F replayed as train_on_batch steps", "replay_weighted_mean", "float rounding"),
             ("D: R in inference mode, same weights", "fit_inference", "training-mode layers (dropout)"),
             ("E': D at the end-of-epoch weights (evaluate)", "replay_evaluate", "weights moving during the epoch"),
             ("E: E' with fit's own end-of-epoch weights", "evaluate", "float rounding")]
    rows, previous = [], None
    for label, key, part in steps:
        change = "" if part is None else _signed(r[key] - r[previous])
        rows.append([label, _f(r[key]), change, part or ""])
        previous = key
    return rows


def chain_table(results: dict, epoch: int = -1) -> str:
    """One epoch's variants, each differing from the row above it in one factor."""
    return markdown_table(["variant", "loss", "change", "part"], _chain_rows(results["epochs"][epoch]))


def speed_table(results: dict) -> str:
    """One row per way of training (the reasons: `speed_reasons`)."""
    headers = ["how", "steps/s", "us/step", "slower than fused", "first epoch s (incl. compile)", "dispatches/epoch"]
    rows = [[r["label"], f"{r['steps_per_s']:,.0f}", f"{r['us_per_step']:.1f}",
             f"{r['speedup_of_fused']:.2f}x", f"{r['first_epoch_s']:.3f}", str(r["dispatches_per_epoch"])]
            for r in results["speed"]["rows"]]
    return markdown_table(headers, rows)


def speed_reasons(results: dict) -> list[str]:
    """One line per speed row: what makes the difference."""
    return [f"{r['label']}: {r['why']}." for r in results["speed"]["rows"]]


def summary(results: dict) -> list[str]:
    """Three sentences: the two loss gaps of the last epoch and the speed ratio."""
    r, epochs = results["epochs"][-1], len(results["epochs"])
    p, g = r["parts"], r["gaps"]
    fast, slow = results["speed"]["rows"][0], results["speed"]["rows"][-1]
    loop = (f"Epoch {epochs}: fit reports {r['fit']:.6f}; np.mean of the train_on_batch losses is "
            f"{r['loop_mean']:.6f} ({_signed(g['loop_mean_minus_fit'])} = batch order "
            f"{_signed(p['batch_order'])} + last-batch weighting {_signed(p['partial_batch_weighting'])} "
            f"+ float rounding {_signed(p['loop_rounding'])}).")
    evaluate = (f"evaluate at the end of the epoch gives {r['evaluate']:.6f} "
                f"({_signed(g['evaluate_minus_fit'])} = training-mode layers "
                f"{_signed(p['training_mode_layers'])} + weights moving {_signed(p['weights_moving'])} "
                f"+ float rounding {_signed(p['replay_rounding'])}).")
    speed = (f"Speed: {fast['label']} runs {fast['steps_per_s']:,.0f} steps/s ({fast['us_per_step']:.1f} "
             f"us/step), {slow['speedup_of_fused']:.1f}x the {slow['label']}: the same updates, less "
             f"overhead per step.")
    return [loop, evaluate, speed]
