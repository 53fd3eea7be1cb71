"""Progress output: Keras 3's lines on a pipe or a file, a bar plus the same full lines in a terminal."""

import json
import os
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest

import batchfit as bf
from batchfit.callbacks import progress
from batchfit.callbacks.progress import ProgbarLogger, format_value, progress_line

X = np.arange(30, dtype=np.float32).reshape(10, 3) / 10
Y = X.sum(axis=1, keepdims=True)

# `3/3 - 0s - 31ms/step - 97 steps/s - loss: 0.2000 - mae: 0.1000`: count, time, time per step, rate, logs
FINAL = re.compile(r"^(?P<count>\s*\d+/\d+) - (?P<time>\d+s) - (?P<per_step>\d+(s|ms|us)/step)"
                   r" - [\d,]+ steps/s(?P<logs>( - \w+: \S+)*)$")

SCRIPT = """
import json, sys
import numpy as np
import batchfit as bf
x = np.arange(30, dtype=np.float32).reshape(10, 3) / 10
y = x.sum(axis=1, keepdims=True)
model = bf.Sequential([bf.layers.Dense(1, input_shape=(3,))], seed=0)
model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
history = model.fit(x, y, batch_size=4, epochs=2, validation_data=(x[:4], y[:4]))   # verbose="auto"
evaluated = model.evaluate(x, y, batch_size=4, return_dict=True)
model.predict(x, batch_size=4)
with open(sys.argv[1], "w") as f:
    json.dump({"history": history.history, "evaluate": {k: float(v) for k, v in evaluated.items()}}, f)
"""


def model():
    m = bf.Sequential([bf.layers.Dense(1, input_shape=(3,))], seed=0)
    m.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    return m


def parse(line: str) -> dict:
    """The fields of one final line; its logs as {name: printed value}."""
    match = FINAL.match(line)
    assert match, f"not a Keras progress line: {line!r}"
    logs = dict(item.split(": ") for item in match["logs"].split(" - ")[1:])
    return {"count": match["count"].strip(), "time": match["time"], "per_step": match["per_step"], "logs": logs}


def assert_logs(printed: dict, expected: dict):
    """Every log is printed, with Keras's 4 decimals (all these values are above 1e-3)."""
    assert printed == {name: f"{value:.4f}" for name, value in expected.items()}


def test_the_final_line_is_keras_format_worked_by_hand():
    # 32 steps in 0.992 s: 31 ms per step, 32.3 steps per second, "1s" elapsed
    assert progress_line(32, 32, 0.992, {"loss": 0.2, "mae": 0.1, "batch_loss": 9.0}) == \
        "32/32 - 1s - 31ms/step - 32 steps/s - loss: 0.2000 - mae: 0.1000"
    assert progress_line(3, 10, 2.5, {}) == " 3/10 - 2s - 833ms/step - 1 steps/s"   # count padded as Keras
    assert progress_line(4000, 4000, 0.2, {"loss": -1.5}).startswith("4000/4000 - 0s - 50us/step - 20,000 steps/s")
    assert (format_value(0.00012345), format_value(0.0), format_value(np.float32(2.0))) == \
        ("1.2345e-04", "0.0000e+00", "2.0000")     # Keras switches to 4 significant digits at 1e-3


def test_verbose_1_without_a_terminal_prints_the_epoch_then_the_full_line(capsys):
    history = model().fit(X, Y, batch_size=4, epochs=3, verbose=1, validation_data=(X[:4], Y[:4]))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "━" not in out      # no bar, no control codes
    lines = out.splitlines()
    assert len(lines) == 6 and lines[0::2] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    for epoch, line in enumerate(lines[1::2]):
        fields = parse(line)
        assert fields["count"] == "3/3"          # 10 samples in batches of 4: 3 steps
        assert_logs(fields["logs"], {k: v[epoch] for k, v in history.history.items()})
    assert list(parse(lines[1])["logs"]) == ["loss", "mae", "val_loss", "val_mae"]


def test_verbose_2_prints_one_line_per_epoch_with_the_same_fields(capsys):
    history = model().fit(X, Y, batch_size=4, epochs=2, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines):
        prefix = f"Epoch {epoch + 1}/2 - "
        assert line.startswith(prefix)
        fields = parse(line[len(prefix):])
        assert fields["count"] == "3/3"
        assert_logs(fields["logs"], {k: v[epoch] for k, v in history.history.items()})


@pytest.mark.parametrize("verbose", [1, 2])
def test_evaluate_and_predict_print_one_line_at_the_end(capsys, verbose):
    m = model()
    m.fit(X, Y, batch_size=4, epochs=1, verbose=0)
    logs = m.evaluate(X, Y, batch_size=4, verbose=verbose, return_dict=True)
    m.predict(X, batch_size=4, verbose=verbose)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    titles = ("Evaluate - ", "Predict - ") if verbose == 2 else ("", "")
    assert lines[0].startswith(titles[0]) and lines[1].startswith(titles[1])
    evaluated, predicted = parse(lines[0][len(titles[0]):]), parse(lines[1][len(titles[1]):])
    assert evaluated["count"] == predicted["count"] == "3/3"
    assert_logs(evaluated["logs"], logs)
    assert predicted["logs"] == {}


def test_a_stream_of_unknown_length_counts_its_batches(capsys):
    def batches():                                      # 4 + 4 + 2 samples, no len()
        for start in range(0, 10, 4):
            yield X[start:start + 4], Y[start:start + 4]
    history = model().fit(batches(), epochs=1, verbose=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Epoch 1/1"
    assert parse(lines[1])["count"] == "3/3"
    assert_logs(parse(lines[1])["logs"], {k: v[0] for k, v in history.history.items()})


def test_without_a_terminal_it_reads_no_batch_logs_and_lets_the_epoch_fuse(monkeypatch):
    """Nothing is drawn, so no batch hook (no log copy per dispatch) and no limit on fused steps;
    a bar asks for about ten updates: ceil(100 / 10) = 10 steps per dispatch."""
    monkeypatch.setattr(progress, "interactive", lambda: False)
    quiet = ProgbarLogger(1, "fit")
    quiet.set_params({"epochs": 1, "steps": 100, "verbose": 1})
    assert not quiet.live and "on_train_batch_end" not in vars(quiet)
    assert quiet.max_steps_per_execution(100) is None
    monkeypatch.setattr(progress, "interactive", lambda: True)
    bar = ProgbarLogger(1, "fit")
    bar.set_params({"epochs": 1, "steps": 100, "verbose": 1})
    assert bar.live and "on_train_batch_end" in vars(bar)
    assert bar.max_steps_per_execution(100) == 10
    assert ProgbarLogger(2, "fit").live is False


def run_script(tmp_path, stdout, **env):
    results = tmp_path / "results.json"
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(results)], stdout=stdout,
                               stderr=subprocess.PIPE, env={**os.environ, **env})
    return process, results


def check_lines(lines, results):
    """The program's final lines: two epochs, evaluate and predict, each log as History says."""
    history, evaluated = results["history"], results["evaluate"]
    finals = [line for line in lines if FINAL.match(line)]
    assert [line for line in lines if line.startswith("Epoch")] == ["Epoch 1/2", "Epoch 2/2"]
    assert len(finals) == 4 and all(parse(line)["count"] == "3/3" for line in finals)
    for epoch in range(2):
        assert_logs(parse(finals[epoch])["logs"], {k: v[epoch] for k, v in history.items()})
    assert_logs(parse(finals[2])["logs"], evaluated)
    assert parse(finals[3])["logs"] == {}


def test_a_keras_program_writing_to_a_pipe_prints_keras_lines(tmp_path):
    process, results = run_script(tmp_path, subprocess.PIPE)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    out = out.decode()
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 6          # Epoch, line, Epoch, line, evaluate's line, predict's line
    check_lines(lines, json.loads(results.read_text()))


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_in_a_narrow_terminal_the_bar_is_drawn_then_the_full_line_printed(tmp_path):
    """40 columns: the bar runs, is cleared, and each final line is printed whole (longer than 40)."""
    main, child = os.openpty()
    process, results = run_script(tmp_path, child, COLUMNS="40", LINES="24", TERM="xterm-256color")
    os.close(child)
    raw, deadline = b"", time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(main, 4096)
            except OSError:         # the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
        elif process.poll() is not None:
            break
    os.close(main)
    assert process.wait(timeout=60) == 0, process.stderr.read().decode()
    text = raw.decode()
    assert "━" in text                                               # a bar was drawn
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    lines = [line for line in re.split(r"\r\n|\r|\n", plain) if line.strip()]
    check_lines(lines, json.loads(results.read_text()))
    assert all(len(line) > 40 for line in lines if FINAL.match(line) and "loss" in line)
