"""The `batchfit` command line: argument parsing only; the work is in `batchfit.compare`.

    batchfit compare [--preset seed1|seed2] [--epochs N] [--batch-size N] [--samples N] ...

Exit codes: 0 done, 1 the report could not be written, 2 bad options (with a message).
"""

from __future__ import annotations

import argparse

from batchfit.compare.presets import PRESETS, make_config

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
The fit vs train_on_batch study, on generated data (no download), with numbers from this machine:

  1. why the loss fit reports differs from what train_on_batch returns, and from evaluate:
     per epoch, the gaps split into parts (batch order, partial-last-batch weighting,
     training-mode layers, weights moving), each measured by running the variant that
     isolates it;
  2. how much faster fit is, and why: fit fused, fit with steps_per_execution=1, and a
     train_on_batch loop with and without reading each loss, same model and weights;
  3. a picture of both, and a report folder (report.md, results.json, losses.csv,
     compare.png).
"""

_EPILOG = """\
presets:
  seed1  article 1: 1000 x 10 uniform features, random 0/1 labels, Dense(16, relu) ->
         Dense(1, sigmoid), binary crossentropy, Adam, batch 32, 10 epochs (under 30 s)
  seed2  article 2: 100000 x 10 uniform features, uniform targets, Dense(128, relu) ->
         Dense(1), MSE, Adam, batch 32, 10 epochs (a few minutes)

examples:
  batchfit compare
  batchfit compare --labels learnable --dropout 0.2 --out runs/compare
  batchfit compare --preset seed2 --epochs 3 --json > summary.json
"""


def _integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1); got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (the fraction of units dropped); got {value:g}")
    return value


def _add_compare(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("compare", help="the fit vs train_on_batch study: losses, speed, plot, report",
                            description=_DESCRIPTION, epilog=_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="seed1",
                   help="which article's setup to run (default: seed1; see below)")
    p.add_argument("--epochs", type=_integer(1), help="training epochs of the loss study (default: 10)")
    p.add_argument("--batch-size", type=_integer(1), help="samples per batch (default: 32)")
    p.add_argument("--samples", type=_integer(1),
                   help="number of generated samples (default: 1000 for seed1, 100000 for seed2)")
    p.add_argument("--seed", type=_integer(0), default=0,
                   help="seed of the data, the initial weights, the dropout masks and fit's shuffling "
                        "(default: 0)")
    p.add_argument("--labels", choices=("random", "learnable"), default="random",
                   help="'random': the articles' labels with no signal (default); 'learnable': a fixed "
                        "linear rule plus noise, so the losses go down")
    p.add_argument("--dropout", type=_rate, default=0.0, metavar="RATE",
                   help="add Dropout(RATE) after the hidden layer, to see the training-mode part "
                        "(default: 0, no dropout: that part is then measured as 0)")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                   help="fit without shuffling: fit and the train_on_batch loop then see the same "
                        "batches, and the batch-order part is 0 (default: fit shuffles, as in Keras)")
    p.add_argument("--timing-epochs", type=_integer(1),
                   help="timed epochs per speed row, after one warm-up epoch (default: 20 for seed1, "
                        "3 for seed2)")
    p.add_argument("--out", default="batchfit-compare", metavar="DIR",
                   help="report folder, created or replaced as a whole; a folder holding other files "
                        "is refused (default: ./batchfit-compare)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip the picture (no matplotlib)")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable summary (results.json without the per-batch series) "
                        "on stdout instead of the tables")
    p.add_argument("--quiet", action="store_true", help="no progress display and no tables")
    p.set_defaults(run=lambda args: _compare(p, args))
    return p


def build_parser() -> argparse.ArgumentParser:
    """The `batchfit` parser with its `compare` subcommand."""
    from batchfit import __version__

    parser = argparse.ArgumentParser(prog="batchfit", description="batchfit command line tools.")
    parser.add_argument("--version", action="version", version=f"batchfit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_compare(commands)
    return parser


def _compare(parser: argparse.ArgumentParser, args) -> int:
    from batchfit import compare

    try:
        compare.check_out_dir(args.out)
    except ValueError as e:
        parser.error(str(e))
    config = make_config(args.preset, samples=args.samples, batch_size=args.batch_size, epochs=args.epochs,
                         timing_epochs=args.timing_epochs, seed=args.seed, dropout=args.dropout,
                         labels=args.labels, shuffle=args.shuffle)
    return compare.execute(config, args.out, plot=args.plot, as_json=args.json, quiet=args.quiet)


def main(argv=None) -> int:
    """Entry point of the `batchfit` script and `python -m batchfit`; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("choose a command, e.g. `batchfit compare` (see `batchfit compare --help`)")
        return args.run(args)
    except SystemExit as e:              # argparse: --help, --version (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
