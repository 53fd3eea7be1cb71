"""Custom losses and stateful metrics written as Keras 3 writes them: the same class bodies give
Keras's numbers in compile() / fit / evaluate / *_on_batch, and on their own."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pytest import approx  # noqa: E402

import batchfit as bf  # noqa: E402
from batchfit import ops as bf_ops  # noqa: E402

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")   # Keras's own
from keras import ops as keras_ops  # noqa: E402

BATCH = 16          # 50 samples: batches of 16, 16, 16 and a partial 2


def custom_classes(lib, ops, result_is_variable: bool):
    """The user's classes, one body for both libraries (`lib` is keras or batchfit, `ops` its ops).

    Keras 3.15 on this JAX cannot return the variable itself from result() (JAX refuses
    `__jax_array__` during abstractification), so its copy returns `.value`; batchfit takes both."""

    class TruePositives(lib.metrics.Metric):
        def __init__(self, name="true_positives", **kwargs):
            super().__init__(name=name, **kwargs)
            self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")

        def update_state(self, y_true, y_pred, sample_weight=None):
            values = ops.logical_and(ops.equal(y_true, 1), ops.greater_equal(y_pred, 0.5))
            values = ops.cast(values, "float32")
            if sample_weight is not None:
                values = values * ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
            self.tp.assign_add(ops.sum(values))

        def result(self):
            return self.tp if result_is_variable else self.tp.value

        def reset_state(self):
            self.tp.assign(0.0)

    class MeanGap(lib.metrics.Metric):            # a mean over elements, with two variables
        def __init__(self, name="mean_gap", **kwargs):
            super().__init__(name=name, **kwargs)
            self.total = self.add_variable(shape=(), initializer="zeros", name="total")
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            gap = ops.abs(ops.cast(y_true, "float32") - y_pred)
            if sample_weight is not None:
                gap = gap * ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
            self.total.assign_add(ops.sum(gap))
            self.count.assign_add(ops.cast(ops.size(gap), "float32"))

        def result(self):
            return self.total / self.count

    class MeanOfMax(lib.metrics.Mean):            # Keras's pattern: a Mean fed per-sample values
        def __init__(self, name="mean_of_max", **kwargs):
            super().__init__(name=name, **kwargs)

        def update_state(self, y_true, y_pred, sample_weight=None):
            return super().update_state(ops.max(y_pred, axis=-1), sample_weight=sample_weight)

    class ShareOfMisses(lib.metrics.Metric):      # a sub-metric's variables are part of the state
        def __init__(self, name="share_of_misses", **kwargs):
            super().__init__(name=name, **kwargs)
            self.gaps = lib.metrics.Mean(name="gaps")
            self.misses = self.add_variable(shape=(), initializer="zeros", name="misses")

        def update_state(self, y_true, y_pred, sample_weight=None):
            gap = ops.abs(y_true - y_pred)
            self.gaps.update_state(gap)
            self.misses.assign_add(ops.sum(ops.cast(ops.greater(gap, 0.5), "float32")))

        def result(self):
            return self.misses / (2.0 * self.gaps.count)

    class ScaledSquare(lib.losses.Loss):          # per element: [B, 2]
        def __init__(self, scale=1.0, name="scaled_square", **kwargs):
            super().__init__(name=name, **kwargs)
            self.scale = scale

        def call(self, y_true, y_pred):
            return self.scale * ops.square(y_true - y_pred)

        def get_config(self):
            return {**super().get_config(), "scale": self.scale}

    def absolute_gap(y_true, y_pred):             # a loss function, per element too
        return ops.abs(y_true - y_pred)

    return TruePositives, MeanGap, ScaledSquare, absolute_gap, MeanOfMax, ShareOfMisses


KERAS = custom_classes(keras, keras_ops, result_is_variable=False)
OURS = custom_classes(bf, bf_ops, result_is_variable=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    return x, (rng.random((50, 2)) > 0.5).astype(np.float32)


def keras_model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
                             keras.layers.Dense(2, activation="sigmoid")])


def our_model(weights):
    model = bf.Sequential([bf.layers.Dense(4, activation="relu", input_shape=(3,)),
                           bf.layers.Dense(2, activation="sigmoid")], seed=0)
    model.set_weights(weights)
    return model


def compile_args(classes, loss="class"):
    true_positives, mean_gap, scaled_square, absolute_gap, mean_of_max, share_of_misses = classes
    return dict(loss=scaled_square(2.0) if loss == "class" else absolute_gap,
                metrics=[true_positives(), mean_gap(), mean_of_max(), share_of_misses()])


class BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})


@pytest.fixture(scope="module")
def reference(data):
    """Keras: 2 epochs of SGD with the custom loss and metrics (running logs of epoch 0 kept), evaluate,
    then one train_on_batch and test_on_batch."""
    x, y = data
    model = keras_model()
    weights = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), **compile_args(KERAS))
    batch_logs = BatchLogs()
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[batch_logs])
    out = dict(initial=weights, history=history.history, batch_logs=batch_logs.logs[:4],
               weights=model.get_weights(), evaluate=model.evaluate(x, y, batch_size=BATCH, verbose=0,
                                                                    return_dict=True))
    out["train_on_batch"] = model.train_on_batch(x[:BATCH], y[:BATCH], return_dict=True)
    out["test_on_batch"] = model.test_on_batch(x[:BATCH], y[:BATCH], return_dict=True)
    return out


def ours_compiled(reference, steps_per_execution=1, loss="class"):
    model = our_model(reference["initial"])
    model.compile(optimizer=bf.optimizers.SGD(learning_rate=0.5), steps_per_execution=steps_per_execution,
                  **compile_args(OURS, loss))
    return model


def assert_logs_match(ours: dict, theirs: dict):
    assert set(ours) == set(theirs)
    for name in theirs:
        assert np.asarray(ours[name], np.float64) == approx(np.asarray(theirs[name], np.float64), rel=1e-5), name


# ------------------------------------------------------------------- in compile(), against Keras

@pytest.mark.parametrize("steps_per_execution", [1, 7])
def test_fit_with_custom_loss_and_stateful_metrics_matches_keras(data, reference, steps_per_execution):
    """History per epoch (a per-element Loss; a true-positive count, a mean over elements, a Mean subclass,
    a metric with a sub-metric), the final weights, evaluate and *_on_batch, with the partial last batch
    of 2 inside one dispatch (7) or on its own (1)."""
    x, y = data
    model = ours_compiled(reference, steps_per_execution)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    assert_logs_match(history.history, reference["history"])
    assert reference["history"]["true_positives"][0] == history.history["true_positives"][0] > 10  # a count
    for ours, theirs in zip(model.get_weights(), reference["weights"]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert_logs_match(model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True), reference["evaluate"])
    assert_logs_match(model.train_on_batch(x[:BATCH], y[:BATCH], return_dict=True), reference["train_on_batch"])
    assert_logs_match(model.test_on_batch(x[:BATCH], y[:BATCH], return_dict=True), reference["test_on_batch"])


def test_train_on_batch_keeps_metric_state_like_fits_running_logs(data, reference):
    """train_on_batch(reset_metrics=False) over epoch 0's batches: Keras's running batch logs in fit
    (Keras 3's train_on_batch always resets, so fit's logs are the reference)."""
    x, y = data
    model = ours_compiled(reference)
    for i, theirs in enumerate(reference["batch_logs"]):
        ours = model.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH],
                                    reset_metrics=False, return_dict=True)
        assert_logs_match(ours, theirs)
    fresh = model.train_on_batch(x[:2], y[:2], return_dict=True)          # reset_metrics=True: this batch only
    assert fresh["true_positives"] <= 4


def test_loss_function_returning_elements_matches_keras(data, reference):
    x, y = data
    model = keras_model()
    model.set_weights(reference["initial"])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), **compile_args(KERAS, loss="function"))
    theirs = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    ours = ours_compiled(reference, 3, loss="function")
    assert_logs_match(ours.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0).history, theirs.history)
    for a, b in zip(ours.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_metric_state_is_traced_once_and_independent_of_steps_per_execution(data, reference):
    """steps_per_execution 1 and 7 (the partial batch alone or inside the scan) give the same History;
    the state's first value (host arrays) and later ones (device arrays) share one trace per chunk shape."""
    x, y = data
    traces = []

    class Counted(OURS[0]):
        def update_state(self, y_true, y_pred, sample_weight=None):
            traces.append(1)                    # runs only while tracing
            super().update_state(y_true, y_pred, sample_weight)

    histories = {}
    for steps in (1, 7):
        model = our_model(reference["initial"])
        model.compile(optimizer=bf.optimizers.SGD(learning_rate=0.5), steps_per_execution=steps,
                      loss=OURS[2](2.0), metrics=[Counted(), OURS[1](), OURS[5]()])
        histories[steps] = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0).history
    assert len(traces) == 2 + 2       # steps 1: chunks [1 full], [tail of 2]; steps 7: [3 full + tail]: scan body, tail
    assert_logs_match(histories[1], histories[7])


def test_sample_weights_reach_weighted_metrics_only(data, reference):
    """As Keras 3: `weighted_metrics=` get the batch's weights [B] (0 for the second half here), `metrics=`
    none; a metric in both is logged a second time as weighted_{name}."""
    x, y = data
    weights = np.r_[np.ones(25), np.zeros(25)].astype(np.float32)
    model = our_model(reference["initial"])
    args = compile_args(OURS, "class")
    model.compile(optimizer="sgd", **args, weighted_metrics=[OURS[0](), OURS[1]()])
    logs = model.evaluate(x, y, sample_weight=weights, batch_size=BATCH, verbose=0, return_dict=True)
    p = model.predict(x, verbose=0)
    assert logs["true_positives"] == np.sum((y == 1) & (p >= 0.5))
    assert logs["weighted_true_positives"] == np.sum((y[:25] == 1) & (p[:25] >= 0.5))
    assert logs["mean_gap"] == approx(np.sum(np.abs(y - p)) / y.size, rel=1e-5)
    assert logs["weighted_mean_gap"] == approx(np.sum(np.abs(y[:25] - p[:25])) / y.size, rel=1e-5)


def test_a_position_mid_epoch_carries_the_metric_state(data, reference):
    """Stopped after batch 1 of epoch 1, put back into a new model: the rest of the run is bitwise the same."""
    x, y = data

    class StopAt(bf.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == (1, 1):
                self.position = self.model.get_position()
                self.model.stop_training = True

    kwargs = dict(batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    whole = ours_compiled(reference).fit(x, y, **kwargs)
    stop = StopAt()
    ours_compiled(reference).fit(x, y, callbacks=[stop], **kwargs)
    (tp,), (total, count), _, (misses, _, gaps_count) = stop.position.metric_states   # after 2 batches
    assert tp > 0 and count == 2 * BATCH * 2 and 0 < total < count
    assert gaps_count == 2 * BATCH and 0 < misses < 2 * gaps_count
    resumed = ours_compiled(reference)
    resumed.set_position(stop.position)
    assert resumed.fit(x, y, **kwargs).history == {k: v[1:] for k, v in whole.history.items()}


# ----------------------------------------------------------------------- on their own, against Keras

def test_standalone_metrics_match_keras():
    rng = np.random.default_rng(1)
    batches = [((rng.random((5, 2)) > 0.5).astype(np.float32), rng.random((5, 2)).astype(np.float32))
               for _ in range(2)]
    weight = np.array([1.0, 0.0, 2.0, 1.0, 0.5], np.float32)
    for theirs_class, ours_class in zip(KERAS[:2] + KERAS[4:], OURS[:2] + OURS[4:]):
        theirs, ours = theirs_class(), ours_class()
        assert ours.name == theirs.name and len(ours.variables) == len(theirs.variables)
        assert ours.get_config() == theirs.get_config() == {"name": ours.name, "dtype": "float32"}
        assert type(ours).from_config(ours.get_config()).name == ours.name
        for y_true, y_pred in batches:
            theirs.update_state(y_true, y_pred, sample_weight=weight)
            ours.update_state(y_true, y_pred, sample_weight=weight)
            assert float(ours.result()) == approx(float(theirs.result()), rel=1e-6)
        assert float(ours(*batches[0])) == approx(float(theirs(*batches[0])), rel=1e-6)   # __call__ accumulates
        theirs.reset_state()
        ours.reset_state()
        ours.update_state(*batches[1])
        theirs.update_state(*batches[1])
        assert float(ours.result()) == approx(float(theirs.result()), rel=1e-6)


def test_standalone_mean_sum_and_wrapper_match_keras():
    values, weight = np.array([[1.0, 3.0], [5.0, 7.0], [2.0, 2.0]], np.float32), np.array([1.0, 0.0, 2.0], np.float32)
    for name in ["Mean", "Sum"]:
        ours, theirs = getattr(bf.metrics, name)(), getattr(keras.metrics, name)()
        for w in (weight, None):
            ours.update_state(values, sample_weight=w)
            theirs.update_state(values, sample_weight=w)
        assert float(ours.result()) == approx(float(theirs.result()), rel=1e-6)
    y_true, y_pred = np.array([[1.0], [0.0], [1.0]], np.float32), np.array([[0.7], [0.6], [0.2]], np.float32)
    ours, theirs = bf.metrics.BinaryAccuracy(), keras.metrics.BinaryAccuracy()
    for m in (ours, theirs):
        m.update_state(y_true, y_pred, sample_weight=weight)
        m.update_state(y_true[:1], y_pred[:1])
    assert float(ours.result()) == approx(float(theirs.result()))              # (1 + 0 + 0 + 1) / (3 + 1)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None])
def test_standalone_loss_reductions_match_keras(reduction):
    """A call returning [B, 2] elements without weights, and [B, 1] elements with weights [B] (Keras
    aligns those ranks; for [B, 2] with weights [B] Keras raises, batchfit weighs whole samples)."""
    y_true = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    y_pred = np.array([[0.5, 0.5], [0.9, 0.2], [0.3, 0.0]], np.float32)
    weight = np.array([1.0, 2.0, 0.0], np.float32)
    ours, theirs = OURS[2](3.0, reduction=reduction), KERAS[2](3.0, reduction=reduction)
    np.testing.assert_allclose(ours(y_true, y_pred), theirs(y_true, y_pred), rtol=1e-6)
    np.testing.assert_allclose(ours(y_true[:, :1], y_pred[:, :1], weight),
                               theirs(y_true[:, :1], y_pred[:, :1], weight), rtol=1e-6)
    # batchfit's extension: weights [B] on [B, 2] elements weigh each sample's row
    expected = 3.0 * (y_true - y_pred) ** 2 * weight[:, None]
    by_reduction = {"sum": expected.sum(), "mean_with_sample_weight": expected.sum() / weight.sum()}
    got = np.asarray(ours(y_true, y_pred, weight))
    want = by_reduction.get(reduction, expected if reduction in (None, "none") else expected.mean())
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_loss_config_round_trip_and_keras_defaults():
    ours, theirs = OURS[2](2.5, reduction="sum"), KERAS[2](2.5, reduction="sum")
    assert ours.get_config() == theirs.get_config() == {"name": "scaled_square", "reduction": "sum", "scale": 2.5}
    again = type(ours).from_config(ours.get_config())
    assert (again.scale, again.reduction, again.name, again.dtype) == (2.5, "sum", "scaled_square", "float32")

    class MyLoss(bf.losses.Loss):                  # Keras's default name: the class name in snake case
        def call(self, y_true, y_pred):
            return jnp.abs(y_true - y_pred)
    assert MyLoss().name == "my_loss" and MyLoss().reduction == "sum_over_batch_size"
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        MyLoss(reduction="average")


def test_loss_with_another_reduction_warns_at_compile(reference):
    model = our_model(reference["initial"])
    with pytest.warns(UserWarning, match="reduction='sum'.*compile\\(\\) reduces"):
        model.compile(optimizer="sgd", loss=OURS[2](reduction="sum"))


# ---------------------------------------------------------------------------------- mistakes

class NoResult(bf.metrics.Metric):
    def __init__(self, name="no_result", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.total.assign_add(jnp.sum(y_pred))


class TwoArguments(NoResult):
    def update_state(self, y_true):
        self.total.assign_add(jnp.sum(y_true))

    def result(self):
        return self.total


class NoSuper(bf.metrics.Metric):
    def __init__(self):
        self.name = "no_super"

    def update_state(self, y_true, y_pred, sample_weight=None):
        pass

    def result(self):
        return 0.0


class NoCall(bf.losses.Loss):
    pass


class VectorResult(TwoArguments):
    def update_state(self, y_true, y_pred, sample_weight=None):
        pass

    def result(self):
        return jnp.zeros(3)


@pytest.mark.parametrize("arguments, match", [
    (dict(loss="mse", metrics=[NoResult()]), r"NoResult defines no result\(\).*return self\.total / self\.count"),
    (dict(loss="mse", metrics=[TwoArguments()]),
     r"TwoArguments\.update_state\(y_true\) cannot be called as update_state\(y_true, y_pred, sample_weight"),
    (dict(loss="mse", metrics=[NoSuper()]), r"NoSuper\.__init__ does not call super\(\)\.__init__"),
    (dict(loss=NoCall()), r"NoCall defines no call\(\).*call\(self, y_true, y_pred\)"),
    (dict(loss=keras.losses.MeanSquaredError()), "Subclass batchfit.losses.Loss"),
    (dict(loss="mse", metrics=[keras.metrics.Mean()]), "Subclass batchfit.metrics.Metric"),
])
def test_incomplete_custom_objects_are_refused_at_compile(reference, arguments, match):
    with pytest.raises(TypeError, match=match):
        our_model(reference["initial"]).compile(optimizer="sgd", **arguments)


def test_a_result_that_is_not_a_scalar_is_explained(data, reference):
    x, y = data
    model = our_model(reference["initial"])
    model.compile(optimizer="sgd", loss="mse", metrics=[VectorResult()])
    with pytest.raises(ValueError, match=r"VectorResult\.result\(\) returned float32\[3\].*Return a scalar"):
        model.fit(x, y, verbose=0)
