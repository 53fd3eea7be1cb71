"""The report folder: report.md, results.json, losses.csv and compare.png, replaced as a whole.

Files are written into a temporary sibling folder, which then takes the place of --out by
rename; nothing else is written. A folder that holds anything but an earlier report is
refused, never overwritten.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

from batchfit.compare import tables

__all__ = ["FILES", "SCHEMA", "check_out_dir", "command_line", "json_summary", "render_markdown",
           "write_report"]

FILES = {"report": "report.md", "results": "results.json", "losses": "losses.csv", "plot": "compare.png"}

SCHEMA = """\
`results.json` (schema `batchfit.compare/1`). Losses are in the loss's units, float64 on the host
(the device computes in float32); epochs and batches are 0-based in the files (the tables count
epochs from 1). The letters name the variants of the decomposition.

- `schema`: "batchfit.compare/1"; `runtime_s`: wall time of the study (seconds).
- `config`: `preset`, `samples`, `features`, `batch_size`, `epochs`, `timing_epochs`, `seed`,
  `dropout`, `labels` ("random" | "learnable"), `shuffle` (fit's setting; the loop never shuffles),
  `model`, `loss`, `data`, `num_batches`, `last_batch_size`.
- `environment`: `batchfit`, `jax`, `numpy`, `python`, `platform`, `machine`, `cpu_count`, `device`.
- `epochs[e]`: one object per epoch:
  - `fit` (F): `history.history["loss"][e]`, what fit reports;
  - `fit_batch_weighted_mean`: sum_b n_b L_b / N over fit's own raw batch losses (equals `fit`);
  - `fit_unshuffled` (P): what fit(shuffle=False) reports (the loop's batches, fit's executable);
  - `loop_weighted_mean` (W): sum_b n_b L_b / N over the train_on_batch loop's raw losses;
  - `loop_mean` (U): `np.mean` of those losses (what a user computes); `loop_min`, `loop_max`,
    `loop_std` (population std): their spread;
  - `replay_weighted_mean` (R): the same formula over a train_on_batch loop replaying fit's order;
  - `fit_inference` (D): that replay's batches at its pre-update weights in inference mode
    (`test_on_batch` before each update), n_b-weighted;
  - `replay_evaluate` (E'): `evaluate(x, y)` with the replay's end-of-epoch weights;
  - `evaluate` (E): `evaluate(x, y)` with fit's end-of-epoch weights; `loop_evaluate`: with the loop's;
  - `parts`: `batch_order` = P - F, `loop_rounding` = W - P, `partial_batch_weighting` = U - W,
    `training_mode_layers` = D - R, `weights_moving` = E' - D,
    `replay_rounding` = (R - F) + (E - E');
  - `gaps`: `loop_mean_minus_fit` = U - F = batch_order + loop_rounding + partial_batch_weighting;
    `evaluate_minus_fit` = E - F = training_mode_layers + weights_moving + replay_rounding.
- `checks`: largest absolute differences: `fit_loss_vs_weighted_batch_mean`,
  `replay_vs_fit_batch_losses` and `replay_vs_fit_evaluate` (the replay retraces fit),
  `unshuffled_fit_vs_loop_batch_losses` and `unshuffled_fit_vs_loop_epoch_loss`
  (fit(shuffle=False) vs the loop), `decomposition_residual` (parts vs gaps).
- `speed`: `timing_epochs`, `num_batches`, `shuffle_in_fit`, and `rows[i]` for fit fused, fit with
  steps_per_execution=1, the loop not reading its losses, the loop reading each: `key`, `label`,
  `why`, `epoch_seconds` (warm-up first), `median_epoch_s` (median of the timed epochs),
  `steps_per_s`, `us_per_step`, `first_epoch_s` (includes trace + compile), `compile_s`
  (first epoch minus the median), `dispatches_per_epoch`, `speedup_of_fused` (median epoch / fused's).
- `batches`: per-batch series, each [epochs][num_batches]: `fit_loss` (fit's raw batch losses, its
  order), `fit_running_mean` (fit's running figure), `fit_inference_loss` (D's), `fit_unshuffled_loss`,
  `loop_loss` (raw train_on_batch losses), `loop_inference_loss`; and `batch_size` [num_batches].

`losses.csv`: one row per batch with `epoch`, `batch`, `batch_size`, `position` (epoch + (batch+1) /
num_batches, the plot's x) and the six `batches` series as columns.
"""

_CSV_SERIES = ("fit_loss", "fit_running_mean", "fit_inference_loss", "fit_unshuffled_loss",
               "loop_loss", "loop_inference_loss")


def _is_report(path: Path) -> bool:
    try:
        return json.loads((path / FILES["results"]).read_text()).get("schema", "").startswith("batchfit.compare")
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(out) -> Path:
    """`out` as a Path if a report may be written there; ValueError saying why not otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing file; give a folder (it is created, "
                         f"or replaced if it holds an earlier report).")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise ValueError(f"--out {str(out)!r} is a folder with other files in it; batchfit compare only "
                         f"replaces a folder holding an earlier report. Choose an empty or new folder.")
    return out


def write_report(results: dict, out, plot: bool = True) -> Path:
    """Write every file into a temporary folder, then rename it to `out` (replacing an earlier report)."""
    out = check_out_dir(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))
    try:
        staging.chmod(0o777 & ~_umask())        # mkdtemp makes it private; a report folder is not
        if plot:
            from batchfit.compare.plot import draw

            draw(results, staging / FILES["plot"])
        (staging / FILES["results"]).write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
        _write_csv(results, staging / FILES["losses"])
        (staging / FILES["report"]).write_text(render_markdown(results, plot))
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        old.rename(out)           # put the earlier report back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_csv(results: dict, path: Path) -> None:
    batches = results["batches"]
    sizes = batches["batch_size"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "batch", "batch_size", "position", *_CSV_SERIES])
        for epoch in range(len(results["epochs"])):
            for b, size in enumerate(sizes):
                writer.writerow([epoch, b, size, repr(epoch + (b + 1) / len(sizes)),
                                 *(repr(batches[s][epoch][b]) for s in _CSV_SERIES)])


def command_line(config: dict) -> str:
    """The `batchfit compare` command that reruns this study."""
    words = ["batchfit compare", f"--preset {config['preset']}", f"--samples {config['samples']}",
             f"--batch-size {config['batch_size']}", f"--epochs {config['epochs']}",
             f"--timing-epochs {config['timing_epochs']}", f"--seed {config['seed']}",
             f"--labels {config['labels']}"]
    if config["dropout"]:
        words.append(f"--dropout {config['dropout']:g}")
    if not config["shuffle"]:
        words.append("--no-shuffle")
    return " ".join(words)


def json_summary(results: dict, out) -> dict:
    """What --json prints: everything but the per-batch series, plus where the files are."""
    summary = {k: v for k, v in results.items() if k != "batches"}
    if out is not None:
        summary["files"] = {k: str(Path(out) / name) for k, name in FILES.items()}
    return summary


def _checks_table(results: dict) -> str:
    rows = [[name, f"{value:.3g}"] for name, value in results["checks"].items()]
    return tables.markdown_table(["check (largest absolute difference)", "value"], rows)


def render_markdown(results: dict, plot: bool = True) -> str:
    """report.md: the answer, the picture, the tables, what each part means, the schema."""
    config, env = results["config"], results["environment"]
    picture = f"![losses and speed]({FILES['plot']})\n\n" if plot else ""
    setup = (f"`{command_line(config)}`  \n{config['data']}; {config['model']}; {config['samples']} samples, "
             f"batch {config['batch_size']} ({config['num_batches']} batches, the last of "
             f"{config['last_batch_size']}), {config['epochs']} epochs, fit shuffle={config['shuffle']}.  \n"
             f"batchfit {env['batchfit']}, jax {env['jax']}, {env['device']}, {env['cpu_count']} CPU cores, "
             f"{env['platform']}; the study took {results['runtime_s']:.1f} s.\n")
    sections = [
        "# batchfit compare: fit vs train_on_batch\n", setup, "## The answer\n", "\n".join(f"- {line}" for line in tables.summary(results)) + "\n",
        picture + "## 1. Loss per epoch\n", tables.loss_table(results) + "\n", _LOSS_NOTES,
        "## 2. Where the differences come from\n",
        "fit vs the mean of your train_on_batch losses:\n\n" + tables.gap_table(results, "loop_mean_minus_fit") + "\n",
        "fit vs evaluate:\n\n" + tables.gap_table(results, "evaluate_minus_fit") + "\n",
        f"The last epoch, one factor at a time:\n\n{tables.chain_table(results)}\n", _PARTS_NOTES,
        "Consistency checks (float32 rounding is about 1e-7):\n\n" + _checks_table(results) + "\n",
        "## 3. Speed\n", tables.speed_table(results) + "\n",
        "\n".join(f"- {line}" for line in tables.speed_reasons(results)) + "\n", _speed_notes(results),
        "## Files\n", _FILES_NOTES, SCHEMA,
    ]
    return "\n".join(sections)


_LOSS_NOTES = """\
*fit reports*: `history.history["loss"]`, the batch-size-weighted mean of the epoch's batch losses,
each measured before its own update. *train_on_batch*: the raw losses a Python loop over the same
data collects (unshuffled, as in the article), their `np.mean`, their n_b-weighted mean and spread.
*evaluate*: `model.evaluate(x, y)` on the training data with fit's weights at the end of the epoch.
"""

_PARTS_NOTES = """\
Each row changes one thing, so the parts add up exactly to the two gaps (`np.mean - fit` and
`evaluate - fit`). Each is measured by running the variant, not estimated:

- **batch order**: fit shuffles every epoch, the loop does not, so they see different batches and
  end each epoch at different weights. Measured by fit(shuffle=False); 0 with `--no-shuffle`.
- **partial-last-batch weighting**: fit weighs batch b by its size n_b; `np.mean` gives each batch
  the same weight, so a short last batch counts too much. 0 when the batch size divides the samples.
- **training-mode layers**: fit's losses are taken in training mode (dropout on); evaluate's in
  inference mode. Measured by `test_on_batch` on each batch just before its update, in a
  train_on_batch loop that replays fit's order and so retraces fit. 0 without dropout.
- **weights moving**: fit's figure averages losses taken at weights that keep changing during the
  epoch (mostly worse than the final ones); evaluate uses the end-of-epoch weights for every sample.
- **float rounding**: fit's fused loop and single train_on_batch steps do the same arithmetic in
  float32 but round differently. It is about 1e-7 on short runs (the checks below); over thousands
  of steps Adam amplifies it, as it would any reordering of float sums, and the two trajectories
  drift apart by a little.

Batch order and weighting explain fit vs your train_on_batch mean; they cannot be part of
`evaluate - fit`, because evaluate is a per-sample mean at fixed weights: it has no order and no
batch weights. Training-mode layers and moving weights explain fit vs evaluate.
"""


_FILES_NOTES = f"""\
`{FILES['report']}` (this file), `{FILES['plot']}` (the picture), `{FILES['results']}` (every number),
`{FILES['losses']}` (the per-batch series). The whole folder is replaced by the next run.

"""


def _speed_notes(results: dict) -> str:
    speed = results["speed"]
    shuffle = (" fit shuffles each epoch, as users call it; the loops do not." if speed["shuffle_in_fit"]
               else "")
    return (f"Median of {speed['timing_epochs']} timed epochs of {speed['num_batches']} steps after one "
            f"warm-up epoch; *first epoch* includes tracing and compiling. Every row trains the same model "
            f"from the same initial weights with one optimizer update per batch, so the rows differ only in "
            f"overhead per step.{shuffle} Contrary to the article, fit does not accumulate gradients across "
            f"batches: it is faster because it fuses steps into one compiled call and does not wait for the "
            f"host between them.\n")
