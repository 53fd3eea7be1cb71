"""The articles' examples run on batchfit with only the imports changed."""

import pathlib
import re
import runpy

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"
SEEDS = pathlib.Path(__file__).parent.parent.parent / "shared" / "seeds"
PORTS = {"seed1_fit.py": ("000", 0), "seed1_train_on_batch.py": ("000", 1), "seed1_raw_losses.py": ("000", 2),
         "seed2_train_on_batch.py": ("001", 0), "seed2_fit.py": ("001", 1), "seed2_dataset.py": ("001", 2)}
IMPORTS = [("import tensorflow as tf", "import batchfit as bf"), ("tf.keras.models.Sequential", "bf.Sequential"),
           ("tf.keras.Sequential", "bf.Sequential"), ("tf.keras.layers", "bf.layers"),
           ("tf.keras.optimizers", "bf.optimizers"), ("tf.keras.losses", "bf.losses"), ("tf.data", "bf.data")]


def run(name, capsys):
    np.random.seed(0)
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def numbers(text, prefix):
    return [float(m) for m in re.findall(re.escape(prefix) + r"\s*([-0-9.e]+)", text)]


@pytest.mark.skipif(not SEEDS.exists(), reason="shared/seeds is not beside this checkout")
@pytest.mark.parametrize("name", sorted(PORTS))
def test_ports_change_only_the_imports(name):
    prefix, index = PORTS[name]
    article = next(SEEDS.glob(f"{prefix}_*.txt")).read_text()
    code = re.findall(r"```python\n(.*?)```", article, re.S)[index]
    for old, new in IMPORTS:
        code = code.replace(old, new)
    assert code.strip() == (EXAMPLES / name).read_text().strip()


def test_seed1_fit(capsys):
    (loss,) = numbers(run("seed1_fit.py", capsys), "model.fit():")
    assert 0.6 < loss < 0.75                       # random labels: about log(2) = 0.693


def test_seed1_train_on_batch(capsys):
    with pytest.warns(UserWarning, match="before compile"):
        losses = numbers(run("seed1_train_on_batch.py", capsys), "train_on_batch():")
    assert len(losses) == 10 and all(0.5 < l < 1.0 for l in losses)


def test_seed1_raw_losses(capsys):
    with pytest.warns(UserWarning):
        losses = numbers(run("seed1_raw_losses.py", capsys), "loss:")
    assert len(losses) == 31 and all(0.3 < l < 1.2 for l in losses)


def test_seed2_train_on_batch(capsys):
    losses = numbers(run("seed2_train_on_batch.py", capsys), "Loss:")
    assert len(losses) == 1000 and np.mean(losses[-100:]) < np.mean(losses[:10])


def test_seed2_fit(capsys):
    out = run("seed2_fit.py", capsys)
    assert out.count("Epoch") >= 10 and "loss" in out


def test_seed2_dataset(capsys):                   # the article's tf.data pipeline, on the fused device path
    out = run("seed2_dataset.py", capsys)
    losses = numbers(out, "loss:")
    assert out.count("Epoch") == 10 and losses[-1] < losses[0] and losses[-1] < 0.1   # var(U(0,1)) = 1/12
