"""The two study setups (the seed articles' examples), their generated data and their model.

Everything is deterministic from `Config.seed`: the data, the initial weights and the
dropout masks. No download: the data is drawn with NumPy, as the articles draw it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

__all__ = ["PRESETS", "Config", "Preset", "build_model", "describe_model", "make_config", "make_data"]


class Preset(NamedTuple):
    """One article's setup: data shape, model, loss and the defaults of the study."""

    description: str
    samples: int
    features: int
    hidden: int
    output_activation: str | None
    loss: str
    batch_size: int
    epochs: int
    timing_epochs: int


PRESETS = {
    "seed1": Preset("article 1 (fit vs train_on_batch losses): x ~ U[0,1)^10, y random in {0,1}",
                    samples=1000, features=10, hidden=16, output_activation="sigmoid",
                    loss="binary_crossentropy", batch_size=32, epochs=10, timing_epochs=20),
    "seed2": Preset("article 2 (why fit is faster): x ~ U[0,1)^10, y ~ U[0,1)",
                    samples=100_000, features=10, hidden=128, output_activation=None,
                    loss="mse", batch_size=32, epochs=10, timing_epochs=3),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings of one study; `make_config` fills the preset's defaults."""

    preset: str = "seed1"
    samples: int = 1000
    batch_size: int = 32
    epochs: int = 10
    timing_epochs: int = 20
    seed: int = 0
    dropout: float = 0.0
    labels: str = "random"      # "random" as in the articles, or "learnable" (a noisy rule)
    shuffle: bool = True        # fit's default; the train_on_batch loop never shuffles

    @property
    def spec(self) -> Preset:
        return PRESETS[self.preset]

    @property
    def batch_sizes(self) -> list[int]:
        """n_b of every batch of an epoch, the partial last one included."""
        full, tail = divmod(self.samples, self.batch_size)
        return [self.batch_size] * full + ([tail] if tail else [])


def make_config(preset: str = "seed1", **overrides) -> Config:
    """A `Config` with the preset's defaults, overridden by every non-None keyword."""
    spec = PRESETS[preset]
    values = {"samples": spec.samples, "batch_size": spec.batch_size, "epochs": spec.epochs,
              "timing_epochs": spec.timing_epochs}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(preset=preset, **values)


def make_data(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [N, F] uniform in [0, 1), y float32 [N, 1], both from `config.seed`.

    "random" labels are the articles' (no signal: the loss can only fall by memorising);
    "learnable" labels follow a fixed linear rule plus noise, so the curves go down.
    """
    spec, rng = config.spec, np.random.default_rng(config.seed)
    x = rng.random((config.samples, spec.features)).astype(np.float32)
    classify = spec.loss == "binary_crossentropy"
    if config.labels == "random":
        y = rng.integers(0, 2, (config.samples, 1)) if classify else rng.random((config.samples, 1))
        return x, y.astype(np.float32)
    w = rng.normal(size=(spec.features, 1))
    signal = (x - 0.5) @ w * (6.0 / np.sqrt(spec.features))
    if classify:   # logistic noise: about 80% of labels follow the rule
        y = signal + rng.logistic(size=signal.shape) > 0
    else:
        y = signal / 6.0 + 0.5 + 0.1 * rng.normal(size=signal.shape)
    return x, y.astype(np.float32)


def build_model(config: Config, weights=None, steps_per_execution="auto"):
    """The preset's compiled model (Keras Adam), optionally set to `weights` (get_weights order)."""
    import batchfit as bf

    spec = config.spec
    layers = [bf.layers.Dense(spec.hidden, activation="relu", input_shape=(spec.features,))]
    if config.dropout:
        layers.append(bf.layers.Dropout(config.dropout))
    layers.append(bf.layers.Dense(1, activation=spec.output_activation))
    model = bf.Sequential(layers, seed=config.seed)
    model.compile(optimizer="adam", loss=spec.loss, steps_per_execution=steps_per_execution)
    if weights is not None:
        model.set_weights(weights)
    return model


def describe_model(config: Config) -> str:
    """E.g. "Dense(16, relu) -> Dense(1, sigmoid), binary_crossentropy, Adam(1e-3)"."""
    spec = config.spec
    parts = [f"Dense({spec.hidden}, relu)"]
    if config.dropout:
        parts.append(f"Dropout({config.dropout:g})")
    parts.append(f"Dense(1{', ' + spec.output_activation if spec.output_activation else ''})")
    return f"{' -> '.join(parts)}, {spec.loss}, Adam(1e-3)"
