"""`batchfit compare` once its options are parsed: run the study with a progress display, print, save."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys

from batchfit.compare import tables
from batchfit.compare.presets import Config
from batchfit.compare.report import FILES, json_summary, write_report
from batchfit.compare.run import num_ticks, run_study

__all__ = ["execute", "print_tables"]


@contextlib.contextmanager
def _progress(total: int, enabled: bool):
    """A rich progress bar on stderr (stdout stays clean for --json); yields tick(label)."""
    if not enabled:
        yield lambda label: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]compare[/] {task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("starting", total=total)
        yield lambda label: progress.update(task, advance=1, description=label)


def print_tables(results: dict, file=None) -> None:
    """The answer and the three tables, as Markdown, on stdout."""
    config = results["config"]
    say = lambda text="": print(text, file=file or sys.stdout)
    say(f"batchfit compare ({config['preset']}): {config['model']}; {config['samples']} samples, "
        f"batch {config['batch_size']} (last batch {config['last_batch_size']}), {config['epochs']} epochs")
    say(f"data: {config['data']}\n")
    for line in tables.summary(results):
        say(f"- {line}")
    say("\n1. Loss per epoch\n")
    say(tables.loss_table(results))
    say("\n2. Where the differences come from (each part measured by running its variant)\n")
    say(tables.gap_table(results, "loop_mean_minus_fit"))
    say()
    say(tables.gap_table(results, "evaluate_minus_fit"))
    say(f"\nEpoch {len(results['epochs'])}, one factor at a time:\n")
    say(tables.chain_table(results))
    say("\n3. Speed (median epoch after a warm-up epoch)\n")
    say(tables.speed_table(results))
    say()
    for line in tables.speed_reasons(results):
        say(f"- {line}")


def execute(config: Config, out, *, plot: bool = True, as_json: bool = False, quiet: bool = False) -> int:
    """Run, print, save; returns the exit code (1 when the report cannot be written)."""
    if plot and importlib.util.find_spec("matplotlib") is None:
        print("batchfit compare: the picture needs matplotlib (pip install matplotlib); "
              "or pass --no-plot to skip it.", file=sys.stderr)
        return 1
    with _progress(num_ticks(config), enabled=not quiet) as tick:
        results = run_study(config, tick)
    if not (quiet or as_json):
        print_tables(results)
    try:
        path = write_report(results, out, plot=plot)
    except (OSError, ValueError) as e:
        print(f"batchfit compare: cannot write the report to {str(out)!r}: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(json_summary(results, path), allow_nan=False))
    elif not quiet:
        print(f"\nSaved {path / FILES['report']}, {FILES['results']}, {FILES['losses']}"
              f"{', ' + FILES['plot'] if plot else ''} in {path}")
    return 0
