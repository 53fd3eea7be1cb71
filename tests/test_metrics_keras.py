"""Every Keras metric batchfit has gives Keras's own numbers (Keras 3 on JAX is the reference).

Each case feeds the same batches to the Keras metric and to batchfit's, eagerly (`update_state`) and
traced (`jax.jit` of `stateless_update_state`, as compile() runs it), with and without sample weights,
then compares result(), the state variables, reset_state() and one more batch after it. The compiled
tests compare fit / evaluate logs with a Keras metric fed batchfit's predictions batch by batch.
"""

import os
import re

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import batchfit as bf  # noqa: E402
from batchfit import metrics  # noqa: E402

keras = pytest.importorskip("keras")
# Keras reading its own variables with np.array(copy=False): its warning, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

RTOL, ATOL = 1e-5, 1e-6
B = 12


def _batches(kind: str, seed: int):
    """Three (y_true, y_pred, sample_weight) batches of one data kind; scores hit 0, 0.5 and 1 exactly."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        w = rng.uniform(0.0, 2.0, B).astype(np.float32)
        if kind == "binary":          # [B, 1] labels and probabilities
            y = rng.integers(0, 2, (B, 1)).astype(np.float32)
            p = rng.choice([0.0, 0.5, 1.0, *rng.random(5)], (B, 1)).astype(np.float32)
        elif kind == "logits":
            y, p = rng.integers(0, 2, (B, 1)).astype(np.float32), rng.normal(0, 2, (B, 1)).astype(np.float32)
        elif kind == "multilabel":    # [B, 3]
            y = rng.integers(0, 2, (B, 3)).astype(np.float32)
            p = rng.choice([0.0, 0.5, 1.0, *rng.random(9)], (B, 3)).astype(np.float32)
        elif kind in ("onehot", "sparse"):   # 5 classes
            labels = rng.integers(0, 5, B)
            p = rng.dirichlet(np.ones(5), B).astype(np.float32)
            y = np.eye(5, dtype=np.float32)[labels] if kind == "onehot" else labels.astype(np.int32)
        elif kind == "sorted_ids":
            y, p = rng.integers(0, 5, B), np.argsort(-rng.random((B, 5)), axis=-1).astype(np.float32)
        elif kind == "equal":        # Accuracy: exact matches
            y = rng.integers(0, 3, (B, 2)).astype(np.float32)
            p = np.where(rng.random((B, 2)) < 0.6, y, y + 1).astype(np.float32)
        elif kind == "hinge":
            y = rng.choice([-1.0, 1.0], (B, 3)).astype(np.float32)
            p = rng.normal(size=(B, 3)).astype(np.float32)
        else:                        # "positive" regression [B, 3]
            y = rng.uniform(0.1, 3.0, (B, 3)).astype(np.float32)
            p = rng.uniform(0.1, 3.0, (B, 3)).astype(np.float32)
        out.append((y, p, w))
    return out


# (name, kwargs, data kind): the same constructor call in both libraries
STATEFUL = [
    ("AUC", {}, "binary"),
    ("AUC", {"curve": "PR"}, "binary"),
    ("AUC", {"num_thresholds": 5, "summation_method": "majoring"}, "multilabel"),
    ("AUC", {"curve": "PRGAIN", "num_thresholds": 5}, "binary"),
    ("AUC", {"thresholds": [0.3, 0.5, 0.7], "summation_method": "minoring"}, "binary"),
    ("AUC", {"thresholds": [0.25, 0.5, 0.75], "curve": "PR"}, "binary"),
    ("AUC", {"multi_label": True, "num_labels": 3, "curve": "PR"}, "multilabel"),
    ("AUC", {"multi_label": True, "num_labels": 3, "label_weights": [1.0, 2.0, 0.5]}, "multilabel"),
    ("AUC", {"multi_label": True}, "multilabel"),
    ("AUC", {"label_weights": [1.0, 0.0, 3.0]}, "multilabel"),
    ("AUC", {"from_logits": True}, "logits"),
    ("Precision", {}, "binary"),
    ("Precision", {"thresholds": [0.0, 0.5, 1.0]}, "binary"),
    ("Precision", {"top_k": 2}, "multilabel"),
    ("Precision", {"class_id": 2}, "multilabel"),
    ("Precision", {"top_k": 2, "class_id": 1}, "onehot"),
    ("Recall", {"thresholds": [0.2, 0.8], "class_id": 1}, "multilabel"),
    ("Recall", {"top_k": 1}, "onehot"),
    ("TruePositives", {}, "binary"),
    ("TruePositives", {"thresholds": [0.0, 0.25, 0.5, 0.75, 1.0]}, "multilabel"),
    ("FalsePositives", {"thresholds": [0.3, 0.6]}, "binary"),
    ("FalseNegatives", {"thresholds": 0.7}, "binary"),
    ("RootMeanSquaredError", {}, "positive"),
    ("F1Score", {}, "onehot"),
    ("F1Score", {"average": "micro", "threshold": 0.5}, "multilabel"),
    ("F1Score", {"average": "macro"}, "onehot"),
    ("F1Score", {"average": "weighted", "threshold": 0.4}, "multilabel"),
    ("FBetaScore", {"beta": 2.0, "average": "macro", "threshold": 0.5}, "multilabel"),
]

MEANS = [
    ("Accuracy", {}, "equal"),
    ("BinaryAccuracy", {"threshold": 0.4}, "binary"),
    ("CategoricalAccuracy", {}, "onehot"),
    ("SparseCategoricalAccuracy", {}, "sparse"),
    ("TopKCategoricalAccuracy", {"k": 2}, "onehot"),
    ("SparseTopKCategoricalAccuracy", {"k": 2}, "sparse"),
    ("SparseTopKCategoricalAccuracy", {"k": 2, "from_sorted_ids": True}, "sorted_ids"),
    ("MeanAbsoluteError", {}, "positive"),
    ("MeanSquaredError", {}, "positive"),
    ("MeanAbsolutePercentageError", {}, "positive"),
    ("MeanSquaredLogarithmicError", {}, "positive"),
    ("CosineSimilarity", {}, "hinge"),
    ("LogCoshError", {}, "positive"),
    ("Hinge", {}, "hinge"),
    ("Hinge", {}, "multilabel"),
    ("SquaredHinge", {}, "hinge"),
    ("CategoricalHinge", {}, "onehot"),
    ("KLDivergence", {}, "onehot"),
    ("Poisson", {}, "positive"),
    ("BinaryCrossentropy", {}, "multilabel"),
    ("BinaryCrossentropy", {"from_logits": True, "label_smoothing": 0.1}, "logits"),
    ("CategoricalCrossentropy", {"label_smoothing": 0.1}, "onehot"),
    ("SparseCategoricalCrossentropy", {}, "sparse"),
    ("SparseCategoricalCrossentropy", {"from_logits": True}, "sparse"),
]


def _ids(cases):
    return [f"{name}-{'-'.join(f'{k}={v}' for k, v in kwargs.items())}-{kind}" for name, kwargs, kind in cases]


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                               rtol=RTOL, atol=ATOL)


def _compare(name, kwargs, kind, weighted: bool, seed: int):
    """Two batches, reset, one more: result() and every variable agree with Keras after each step."""
    ours, theirs = getattr(metrics, name)(**kwargs), getattr(keras.metrics, name)(**kwargs)
    traced = getattr(metrics, name)(**kwargs)      # the same metric run as compile() runs it
    batches = _batches(kind, seed)
    if not traced.variables:                          # built on its first update, as Keras's: build it
        traced.update_state(*batches[0][:2])
        traced.reset_state()
    update = jax.jit(lambda state, y, p, w: traced.stateless_update_state(state, y, p, sample_weight=w))
    state = traced.stateless_reset_state()
    for step, (y, p, w) in enumerate(batches):
        if step == 2:
            ours.reset_state(), theirs.reset_state()
            state = traced.stateless_reset_state()
            _close(ours.result(), theirs.result())
        w = w if weighted else None
        ours.update_state(y, p, sample_weight=w)
        theirs.update_state(y, p, sample_weight=w)
        state = update(state, y, p, w)
        _close(ours.result(), theirs.result())
        _close(traced.stateless_result(state), theirs.result())
        assert [v.name for v in ours.variables] == [v.name for v in theirs.variables]
        for mine, keras_variable, value in zip(ours.variables, theirs.variables, state):
            _close(mine, keras_variable.numpy())
            _close(value, keras_variable.numpy())
    return ours, theirs


@pytest.mark.parametrize("name, kwargs, kind", STATEFUL, ids=_ids(STATEFUL))
def test_stateful_metric_matches_keras(name, kwargs, kind):
    for seed, weighted in enumerate([False, True]):
        ours, theirs = _compare(name, kwargs, kind, weighted, seed)
    assert ours.name == re.sub(r"_\d+$", "", theirs.name)        # Keras numbers a second "auc" auc_1
    assert not ours.per_sample_mean                   # the engine runs its update_state


@pytest.mark.parametrize("name, kwargs, kind", MEANS, ids=_ids(MEANS))
def test_mean_metric_matches_keras(name, kwargs, kind):
    ours, theirs = _compare(name, kwargs, kind, weighted=True, seed=3)
    assert ours.name == theirs.name
    assert ours.per_sample_mean                       # the engine's (sum w v, sum w) row
    y, p, _ = _batches(kind, 4)[0]                   # per-sample values = Keras's function's, averaged per sample
    values = np.asarray(jax.jit(ours.call)(y, p))
    keras_values = np.asarray(theirs._fn(y, p, **theirs._fn_kwargs)).reshape(B, -1).mean(axis=1)
    _close(values, keras_values)


@pytest.mark.parametrize("name, kwargs", [(n, k) for n, k, _ in STATEFUL + MEANS])
def test_get_config_round_trips(name, kwargs):
    metric = getattr(metrics, name)(name="m", **kwargs)
    config = metric.get_config()
    again = type(metric).from_config(config)
    assert type(again) is type(metric) and again.get_config() == config and again.name == "m"
    assert [v.shape for v in again.variables] == [v.shape for v in metric.variables]
    keras_config = getattr(keras.metrics, name)(name="m", **kwargs).get_config()
    shared = set(keras_config) & set(config)
    assert shared >= {"name", "dtype"} and set(keras_config) - {"axis"} <= set(config)
    for key in shared - {"label_weights"}:
        assert config[key] == keras_config[key], key


def test_compile_settings_save_and_load_the_metric():
    from batchfit.saving import deserialize_object, serialize_object
    for metric in [metrics.AUC(curve="PR", thresholds=[0.2, 0.6], name="pr"), metrics.Precision(top_k=2),
                   metrics.F1Score(average="macro"), metrics.SparseTopKCategoricalAccuracy(k=3)]:
        entry = serialize_object(metric)
        again = deserialize_object(entry, "metric", None)
        assert type(again) is type(metric) and again.get_config() == metric.get_config()


def test_hand_worked_auc_precision_and_rmse():
    # scores [0.1, 0.4, 0.35, 0.8] for labels [0, 0, 1, 1]: 3 of the 4 (pos, neg) pairs are ordered -> 0.75
    auc = metrics.AUC(num_thresholds=1001)
    auc.update_state(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert float(auc.result()) == pytest.approx(0.75, abs=1e-6)
    precision = metrics.Precision(thresholds=[0.3, 0.5])  # > 0.3: 3 predicted, 2 right; > 0.5: 1 of 1
    precision.update_state(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    np.testing.assert_allclose(precision.result(), [2 / 3, 1.0], rtol=1e-6)
    rmse = metrics.RootMeanSquaredError()                 # squared errors 1 and 4 weighted 3:1 -> sqrt(7 / 4)
    rmse.update_state(np.array([0.0, 0.0]), np.array([1.0, 2.0]), sample_weight=np.array([3.0, 1.0]))
    assert float(rmse.result()) == pytest.approx(np.sqrt(7 / 4))


# ------------------------------------------------------------------ inside fit / evaluate

def _binary_problem(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, :1] - 0.5 * x[:, 1:2] + 0.3 * rng.normal(size=(n, 1)) > 0).astype(np.float32)
    return x, y


def _model(metric_list, learning_rate=0.1, weights=None):
    model = bf.Sequential([bf.layers.Input((4,)), bf.layers.Dense(3, activation="tanh"),
                           bf.layers.Dense(1, activation="sigmoid")], seed=0)
    model.compile(optimizer=bf.optimizers.SGD(learning_rate), loss="binary_crossentropy", metrics=metric_list)
    if weights is not None:
        model.set_weights(weights)
    return model


def _keras_metrics():
    return {"auc": keras.metrics.AUC(), "precision": keras.metrics.Precision(),
            "root_mean_squared_error": keras.metrics.RootMeanSquaredError()}


def test_evaluate_gives_keras_results_on_the_same_predictions():
    x, y = _binary_problem()
    model = _model(["auc", metrics.Precision(), metrics.RootMeanSquaredError()])
    logs = model.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    reference = _keras_metrics()
    for start in range(0, len(x), 16):
        p = np.asarray(model.predict_on_batch(x[start:start + 16]))
        for metric in reference.values():
            metric.update_state(y[start:start + 16], p)
    for name, metric in reference.items():
        assert logs[name] == pytest.approx(float(metric.result()), rel=1e-5, abs=1e-6), name
    assert 0.5 < logs["auc"] <= 1.0


def test_fit_gives_keras_results_on_the_predictions_of_each_step():
    # fit's metrics see each batch's predictions at the weights before its update: replay that with
    # predict_on_batch + train_on_batch on a twin model, feeding Keras's metrics the same predictions
    x, y = _binary_problem()
    model = _model([metrics.AUC(), "precision", metrics.RootMeanSquaredError()])
    start_weights = model.get_weights()
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    twin = _model([], weights=start_weights)
    for epoch in range(2):
        reference = _keras_metrics()
        for start in range(0, len(x), 16):
            xb, yb = x[start:start + 16], y[start:start + 16]
            p = np.asarray(twin.predict_on_batch(xb))
            for metric in reference.values():
                metric.update_state(yb, p)
            twin.train_on_batch(xb, yb)
        for name, metric in reference.items():
            assert history[name][epoch] == pytest.approx(float(metric.result()), rel=1e-5, abs=1e-6), (name, epoch)
    assert history["loss"][1] < history["loss"][0]


def test_metrics_unweighted_and_weighted_metrics_weighted_as_keras():
    x, y = _binary_problem()
    w = np.random.default_rng(1).uniform(0.0, 2.0, len(x)).astype(np.float32)
    model = _model([metrics.AUC(name="auc")], weights=None)
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=[metrics.AUC(name="auc")],
                  weighted_metrics=[metrics.AUC(name="weighted_auc"), metrics.Precision(name="weighted_precision")])
    logs = model.evaluate(x, y, sample_weight=w, batch_size=16, return_dict=True, verbose=0)
    p = np.asarray(model.predict_on_batch(x))
    plain, weighted, precision = keras.metrics.AUC(), keras.metrics.AUC(), keras.metrics.Precision()
    for start in range(0, len(x), 16):
        rows = slice(start, start + 16)
        plain.update_state(y[rows], p[rows])
        weighted.update_state(y[rows], p[rows], sample_weight=w[rows])
        precision.update_state(y[rows], p[rows], sample_weight=w[rows])
    assert logs["auc"] == pytest.approx(float(plain.result()), rel=1e-5)
    assert logs["weighted_auc"] == pytest.approx(float(weighted.result()), rel=1e-5)
    assert logs["weighted_precision"] == pytest.approx(float(precision.result()), rel=1e-5)
    assert logs["auc"] != pytest.approx(logs["weighted_auc"], rel=1e-3)


def test_lazily_built_metrics_in_compile():
    """F1Score and AUC(multi_label=True) make their variables on their first batch (Keras's lazy build):
    compile() builds them on the model's output shapes before the first step."""
    x, y = _binary_problem(n=16)
    y2 = np.concatenate([y, 1 - y], axis=1)
    model = bf.Sequential([bf.layers.Input((4,)), bf.layers.Dense(2, activation="sigmoid")], seed=0)
    model.compile(optimizer="sgd", loss="binary_crossentropy",
                  metrics=[metrics.F1Score(average="macro", threshold=0.5), metrics.AUC(multi_label=True)])
    model.fit(x, y2, batch_size=8, epochs=1, verbose=0)
    logs = model.evaluate(x, y2, batch_size=16, return_dict=True, verbose=0)
    p = np.asarray(model.predict_on_batch(x))
    for name, reference in (("f1_score", keras.metrics.F1Score(average="macro", threshold=0.5)),
                            ("auc", keras.metrics.AUC(multi_label=True))):
        reference.update_state(y2, p)
        assert logs[name] == pytest.approx(float(reference.result()), rel=1e-5), name


def test_string_names_are_keras_names():
    for name, cls in [("auc", metrics.AUC), ("AUC", metrics.AUC), ("precision", metrics.Precision),
                      ("recall", metrics.Recall), ("top_k_categorical_accuracy", metrics.TopKCategoricalAccuracy),
                      ("SparseTopKCategoricalAccuracy", metrics.SparseTopKCategoricalAccuracy),
                      ("root_mean_squared_error", metrics.RootMeanSquaredError),
                      ("mape", metrics.MeanAbsolutePercentageError),
                      ("msle", metrics.MeanSquaredLogarithmicError), ("bce", metrics.BinaryCrossentropy),
                      ("f1_score", metrics.F1Score), ("log_cosh_error", metrics.LogCoshError),
                      ("true_positives", metrics.TruePositives), ("kl_divergence", metrics.KLDivergence)]:
        metric = metrics.get(name)
        assert type(metric) is cls and metric.name == name
        assert type(keras.metrics.get(name)) is getattr(keras.metrics, cls.__name__)   # Keras takes it too
    with pytest.raises(ValueError, match="Unknown metric 'rmse'"):     # Keras has no "rmse" either
        metrics.get("rmse")


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.Precision(thresholds=1.5), "`thresholds` must be"),
    (lambda: metrics.Recall(top_k=0), "`top_k` must be"),
    (lambda: metrics.Precision(class_id=-1), "`class_id` must be"),
    (lambda: metrics.TruePositives(thresholds=[]), "`thresholds` must be"),
    (lambda: metrics.AUC(num_thresholds=1), "`num_thresholds` must be"),
    (lambda: metrics.AUC(curve="ROCK"), "`curve` must be one of"),
    (lambda: metrics.AUC(summation_method="trapezoid"), "`summation_method` must be one of"),
    (lambda: metrics.AUC(num_labels=3), "`num_labels` is needed only"),
    (lambda: metrics.F1Score(average="mean"), "`average` must be"),
    (lambda: metrics.FBetaScore(beta=2), "`beta` must be"),
    (lambda: metrics.F1Score(threshold=1), "`threshold` must be"),
    (lambda: metrics.TopKCategoricalAccuracy(k=0), "`k` must be"),
    (lambda: metrics.CategoricalCrossentropy(axis=1), "axis=1"),
    (lambda: metrics.SparseCategoricalCrossentropy(ignore_class=0), "ignore_class"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
