"""`batchfit compare`: the fit vs train_on_batch study on generated data, with real numbers.

It answers two questions on the user's own machine: why the loss fit reports differs from
what train_on_batch returns (a decomposition whose parts are each measured by running the
variant that isolates them), and how much faster fit is, and why (four ways of running the
same training, timed in the same process). See `run`, `speed` and `report.SCHEMA`.

>>> from batchfit.compare import make_config
>>> make_config("seed1", epochs=2).batch_sizes[-1]   # 1000 samples in batches of 32
8
"""

from batchfit.compare.command import execute, print_tables
from batchfit.compare.presets import PRESETS, Config, make_config, make_data
from batchfit.compare.report import SCHEMA, check_out_dir, write_report
from batchfit.compare.run import run_study

__all__ = ["PRESETS", "SCHEMA", "Config", "check_out_dir", "execute", "make_config", "make_data",
           "print_tables", "run_study", "write_report"]
