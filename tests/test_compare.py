"""`batchfit compare`: the numbers in its files agree with each other, the files are sound, bad options exit 2."""

import copy
import csv
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from pytest import approx

from batchfit import compare
from batchfit.cli import main
from batchfit.compare.run import running_mean, weighted_mean
from batchfit.compare.tables import markdown_table

SMALL = ["compare", "--samples", "200", "--epochs", "2", "--timing-epochs", "2", "--batch-size", "32"]


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    """fit shuffles, the loop does not, with dropout: every part of the decomposition is non-zero."""
    out = tmp_path_factory.mktemp("shuffled") / "report"
    assert main([*SMALL, "--dropout", "0.3", "--labels", "learnable", "--seed", "3", "--out", str(out),
                 "--quiet"]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture
def json_run(shuffled, tmp_path, capsys, monkeypatch):
    """--json --no-plot on the numbers of `shuffled` (the study itself is not run again)."""
    monkeypatch.setattr(compare.command, "run_study", lambda config, tick: copy.deepcopy(shuffled[1]))
    out = tmp_path / "report"
    assert main([*SMALL, "--no-plot", "--json", "--out", str(out)]) == 0
    return out, capsys.readouterr().out


def test_weighted_and_running_means_by_hand():     # batches of 4, 4 and 2 samples
    assert weighted_mean([1.0, 2.0, 4.0], [4, 4, 2]) == approx((4 * 1 + 4 * 2 + 2 * 4) / 10)   # 2.0
    assert np.mean([1.0, 2.0, 4.0]) == approx(7 / 3)                   # what np.mean gives instead
    assert running_mean([1.0, 2.0, 4.0], [4, 4, 2]) == approx([1.0, 12 / 8, 20 / 10])


def test_fit_loss_is_the_weighted_mean_of_its_own_batch_losses(shuffled):
    _, results = shuffled
    sizes = results["batches"]["batch_size"]
    assert sizes == [32] * 6 + [8]                                     # 200 = 6 * 32 + 8
    for row, losses in zip(results["epochs"], results["batches"]["fit_loss"]):
        assert row["fit"] == approx(np.dot(losses, sizes) / 200, rel=1e-6)
        assert row["fit"] != approx(np.mean(losses), rel=1e-9)        # not equal weights
    assert results["checks"]["fit_loss_vs_weighted_batch_mean"] < 1e-6


def test_loop_columns_are_the_loop_losses(shuffled):
    _, results = shuffled
    for row, losses in zip(results["epochs"], results["batches"]["loop_loss"]):
        assert row["loop_mean"] == approx(np.mean(losses), abs=1e-12)
        assert row["loop_weighted_mean"] == approx(weighted_mean(losses, [32] * 6 + [8]), abs=1e-12)
        assert (row["loop_min"], row["loop_max"]) == (min(losses), max(losses))
        assert row["loop_std"] == approx(np.std(losses), abs=1e-12)


def test_decomposition_adds_up_to_both_gaps(shuffled):
    _, results = shuffled
    for r in results["epochs"]:
        p = r["parts"]
        assert r["loop_mean"] - r["fit"] == approx(
            p["batch_order"] + p["loop_rounding"] + p["partial_batch_weighting"], abs=1e-6)
        assert r["evaluate"] - r["fit"] == approx(
            p["training_mode_layers"] + p["weights_moving"] + p["replay_rounding"], abs=1e-6)
        # each part is the difference of two measured variants
        assert p["batch_order"] == approx(r["fit_unshuffled"] - r["fit"], abs=1e-12)
        assert p["partial_batch_weighting"] == approx(r["loop_mean"] - r["loop_weighted_mean"], abs=1e-12)
        assert p["training_mode_layers"] == approx(r["fit_inference"] - r["replay_weighted_mean"], abs=1e-12)
        assert p["weights_moving"] == approx(r["replay_evaluate"] - r["fit_inference"], abs=1e-12)
        assert abs(p["training_mode_layers"]) > 1e-4                   # dropout 0.3 is on
        assert abs(p["batch_order"]) > 1e-6                            # different batches
        assert abs(p["loop_rounding"]) < 1e-5 and abs(p["replay_rounding"]) < 1e-5
    assert results["checks"]["decomposition_residual"] < 1e-6


def test_replaying_fits_order_retraces_fit(shuffled):
    _, results = shuffled
    assert results["checks"]["replay_vs_fit_batch_losses"] < 1e-5
    assert results["checks"]["replay_vs_fit_evaluate"] < 1e-5


def test_without_shuffling_fit_and_the_loop_agree(shuffled):
    _, results = shuffled                          # fit(shuffle=False) vs the loop, batch for batch
    batches = results["batches"]
    assert np.asarray(batches["fit_unshuffled_loss"]) == approx(np.asarray(batches["loop_loss"]), abs=1e-5)
    assert results["checks"]["unshuffled_fit_vs_loop_batch_losses"] < 1e-5
    assert results["checks"]["unshuffled_fit_vs_loop_epoch_loss"] < 1e-5
    for r in results["epochs"]:                    # the two routes to the loop's batches agree
        assert r["fit_unshuffled"] == approx(r["loop_weighted_mean"], abs=1e-5)


def test_speed_rows(shuffled):
    _, results = shuffled
    rows = results["speed"]["rows"]
    assert [r["key"] for r in rows] == ["fit_fused", "fit_steps_per_execution_1", "train_on_batch_no_read",
                                        "train_on_batch_read"]
    for r in rows:
        assert len(r["epoch_seconds"]) == 1 + 2                       # warm-up + timed
        assert r["median_epoch_s"] == approx(np.median(r["epoch_seconds"][1:]))
        assert r["steps_per_s"] * r["us_per_step"] == approx(1e6)
        assert r["first_epoch_s"] > r["median_epoch_s"] > 0           # the first epoch compiles
    assert [r["dispatches_per_epoch"] for r in rows] == [1, 7, 7, 7]
    assert rows[0]["speedup_of_fused"] == 1.0


def test_files_are_written_and_consistent(shuffled):
    out, results = shuffled
    assert sorted(p.name for p in out.iterdir()) == ["compare.png", "losses.csv", "report.md", "results.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]   # no staging folder left
    with open(out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 7
    last = rows[-1]
    assert (last["epoch"], last["batch"], last["batch_size"], float(last["position"])) == ("1", "6", "8", 2.0)
    assert float(last["loop_loss"]) == results["batches"]["loop_loss"][1][6]
    report = (out / "report.md").read_text()
    assert "![losses and speed](compare.png)" in report and "partial-last-batch weighting" in report
    assert report.count("| epoch |") == 3                             # losses and the two gap tables
    assert f"{results['epochs'][-1]['fit']:.6f}" in report
    assert "`results.json` (schema `batchfit.compare/1`)" in report


def test_png_is_a_valid_image_of_sensible_size(shuffled):
    out, _ = shuffled
    data = (out / "compare.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 <= width <= 2000 and 600 <= height <= 1600
    assert len(data) > 20_000                                          # something is drawn


def test_json_summary_on_stdout(json_run, shuffled):
    out, stdout = json_run
    summary = json.loads(stdout)                   # stdout holds the JSON only
    assert summary["epochs"] == shuffled[1]["epochs"] and "batches" not in summary
    assert summary["files"]["results"] == str(out.absolute() / "results.json")
    assert sorted(p.name for p in out.iterdir()) == ["losses.csv", "report.md", "results.json"]   # --no-plot


def test_an_earlier_report_is_replaced_as_a_whole(shuffled, tmp_path):
    _, results = shuffled
    out = tmp_path / "report"
    compare.write_report(results, out, plot=False)
    (out / "stale.txt").write_text("from an earlier run")
    compare.write_report(results, out, plot=False)
    assert sorted(p.name for p in out.iterdir()) == ["losses.csv", "report.md", "results.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: must be an integer >= 1"),
    (["--batch-size", "-1"], "--batch-size: must be an integer >= 1"),
    (["--samples", "many"], "--samples: expected an integer"),
    (["--dropout", "1.5"], "--dropout: must be in [0, 1)"),
    (["--preset", "seed3"], "invalid choice: 'seed3'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_exit_2_with_a_message(argv, message, capsys):
    assert main(["compare", *argv]) == 2
    assert message in capsys.readouterr().err


def test_out_must_not_be_a_file_or_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["compare", "--out", str(tmp_path / "file")]) == 2
    assert "is an existing file" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["compare", "--out", str(tmp_path / "mine")]) == 2
    assert "other files in it" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_no_command_exits_2_and_help_exits_0(capsys):
    assert main([]) == 2
    assert main(["compare", "--help"]) == 0
    assert "--timing-epochs" in capsys.readouterr().out


def test_matplotlib_is_imported_only_to_draw():
    code = ("import sys; from batchfit.cli import main; import batchfit.compare; "
            "rc = main(['compare', '--epochs', '0']); print(rc, 'matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["2", "False"]


def test_markdown_table_aligns_numbers_right():
    assert markdown_table(["name", "value"], [["a", "1.5"], ["bb", "-10.25"]]).splitlines() == [
        "| name |  value |", "|------|-------:|", "| a    |    1.5 |", "| bb   | -10.25 |"]
