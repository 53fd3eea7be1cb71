"""Building and handling models as Keras code does: layer(x), bf.Input, Model(inputs, outputs), subclasses,
custom layers, Sequential add / pop / model(x), weights as handles, model.optimizer, summary()."""

import numpy as np
import pytest

import batchfit as bf
from batchfit import layers as L
from batchfit import ops


def test_a_layer_called_on_arrays_builds_once_and_computes_its_formula():
    dense = L.Dense(2, kernel_initializer="ones", bias_initializer="zeros")
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(dense(x), [[6.0, 6.0]])                   # 1 + 2 + 3 per unit
    dense.set_weights([np.full((3, 2), 2.0, np.float32), np.array([1.0, -1.0], np.float32)])
    np.testing.assert_allclose(dense(x), [[13.0, 11.0]])                 # 2 * 6 + b
    assert [w.path for w in dense.weights] == [f"{dense.name}/kernel", f"{dense.name}/bias"]
    assert dense.count_params() == 8


def test_functional_graph_shapes_names_and_errors():
    x = bf.Input((4,), name="features")
    hidden = L.Dense(3, name="hidden")
    h = hidden(x)
    assert h.shape == (None, 3) and hidden.output is h and hidden.input is x
    model = bf.Model(x, L.Dense(1, name="head")(h))
    assert [layer.name for layer in model.layers] == ["features", "hidden", "head"]
    assert model.get_layer("head").count_params() == 4 and model.count_params() == 15 + 4
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        model.get_layer("nope")
    other = bf.Input((2,))
    with pytest.raises(ValueError, match="Graph disconnected"):
        bf.Model(x, L.Dense(1)(other))
    with pytest.raises(TypeError, match="symbolic tensor"):
        x + 1
    with pytest.raises(ValueError, match="agree on every axis"):
        L.Concatenate()([x, bf.Input((2, 2))])


def test_functional_inputs_by_list_or_dict_and_a_shared_layer_counts_once():
    a, b = bf.Input((2,), name="a"), bf.Input((2,), name="b")
    shared = L.Dense(1, kernel_initializer="ones", bias_initializer="zeros")
    model = bf.Model([a, b], L.Add()([shared(a), shared(b)]))
    assert model.count_params() == 3                                      # kernel [2, 1] + bias, once
    xa, xb = np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 4.0]], np.float32)
    np.testing.assert_allclose(model([xa, xb]), [[10.0]])
    np.testing.assert_allclose(model.predict({"a": xa, "b": xb}, verbose=0), [[10.0]])
    with pytest.raises(ValueError, match=r"keys \['a', 'c'\]"):
        model.predict({"a": xa, "c": xb}, verbose=0)


def test_trained_weights_are_read_through_layers_after_train_on_batch():
    x = np.ones((4, 3), np.float32)
    model = bf.Sequential([bf.Input((3,)), L.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer=bf.optimizers.SGD(0.5), loss="mse")
    model.train_on_batch(x, np.ones((4, 1), np.float32))                # dL/dw = 2 (0 - 1) * 1 = -2
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), np.full((3, 1), 1.0))   # 0 + 0.5 * 2
    model.layers[0].kernel.assign(np.zeros((3, 1)))                      # set from outside: the model sees it
    np.testing.assert_allclose(model.predict(x, verbose=0), np.full((4, 1), 1.0))   # the bias alone: 0.5 * 2


def test_sequential_add_pop_call_and_weights():
    model = bf.Sequential(seed=0)
    model.add(bf.Input((3,)))
    model.add(L.Dense(4))
    model.add(L.Dense(2))
    assert len(model.layers) == 2 and model.count_params() == 16 + 10
    kernel = model.layers[0].get_weights()[0]
    out = model(np.ones((5, 3), np.float32))
    assert out.shape == (5, 2)
    popped = model.pop()
    assert isinstance(popped, L.Dense) and model(np.ones((1, 3), np.float32)).shape == (1, 4)
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], kernel)      # kept through pop
    assert [w.trainable for w in model.weights] == [True, True]
    assert model.trainable_weights[0].shape == (3, 4) and model.non_trainable_weights == []


def test_learning_rate_is_read_and_set_without_recompiling():
    x, y = np.ones((8, 1), np.float32), np.zeros((8, 1), np.float32)
    model = bf.Sequential([L.Dense(1, input_shape=(1,), kernel_initializer="ones", bias_initializer="zeros")])
    model.compile(optimizer=bf.optimizers.SGD(0.1), loss="mse")
    assert model.optimizer.learning_rate == pytest.approx(0.1)
    model.train_on_batch(x, y)                  # w = 1 - 0.1 * 2 = 0.8 (dL/dw = 2 * w * 1), b = -0.2
    programs = model._exe
    model.optimizer.learning_rate = 0.5
    model.train_on_batch(x, y)                  # pred 0.6; w = 0.8 - 0.5 * 1.2 = 0.2
    assert model._exe is programs and model.optimizer.learning_rate == 0.5
    assert model.get_weights()[0][0, 0] == pytest.approx(0.2)
    assert model.optimizer.iterations == 2


def test_subclassed_model_with_training_argument_and_custom_layer():
    class Noisy(L.Layer):
        def build(self, input_shape):
            self.shift = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="shift")
            self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

        def call(self, x, training=False):
            if training:
                self.calls.assign(self.calls + 1.0)
            return x + self.shift

    class Net(bf.Model):
        def __init__(self):
            super().__init__(seed=1)
            self.noisy = Noisy()
            self.head = L.Dense(1, kernel_initializer="ones", bias_initializer="zeros")

        def call(self, x, training=False):
            return self.head(self.noisy(x, training=training))

    net = Net()
    x = np.zeros((4, 2), np.float32)
    np.testing.assert_allclose(net(x), np.full((4, 1), 2.0))            # (0 + 1) + (0 + 1)
    net.compile(optimizer="sgd", loss="mse")
    net.fit(x, np.full((4, 1), 2.0, np.float32), batch_size=2, epochs=3, verbose=0)
    assert float(net.noisy.calls.numpy()) == 6.0                          # 2 steps x 3 epochs, training only
    assert [w.path.split("/")[1] for w in net.weights] == ["shift", "calls", "kernel", "bias"]
    assert net.noisy.calls.trainable is False and len(net.trainable_weights) == 3


def test_custom_layer_errors_name_what_to_define():
    class NoCall(L.Layer):
        pass

    with pytest.raises(NotImplementedError, match="must define call"):
        NoCall()(np.ones((1, 2), np.float32))

    class Constrained(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(1,), constraint="non_neg")

        def call(self, x):
            return x * self.w

    with pytest.raises(ValueError, match="constraint"):
        Constrained()(np.ones((1, 1), np.float32))


def test_ops_take_weight_handles_inside_a_compiled_step():
    class Bilinear(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], shape[-1]), initializer="identity", name="w")

        def call(self, x):
            return ops.sum(ops.matmul(x, self.w) * x, axis=-1, keepdims=True)

    model = bf.Sequential([bf.Input((2,)), Bilinear()])
    model.compile(optimizer=bf.optimizers.SGD(0.1), loss="mse")
    x = np.array([[1.0, 2.0]], np.float32)
    assert float(model.train_on_batch(x, np.zeros((1, 1), np.float32))) == pytest.approx(25.0)   # (1 + 4)^2
    # dL/dW = 2 * 5 * x x^T = 10 [[1, 2], [2, 4]]; W = I - 0.1 * that
    np.testing.assert_allclose(model.get_weights()[0], [[0.0, -2.0], [-2.0, -3.0]], atol=1e-6)


def test_summary_prints_keras_table_and_totals():
    model = bf.Sequential([bf.Input((10,)), L.Dense(64, name="d1"), L.BatchNormalization(name="bn"), L.Dense(1)])
    lines = []
    model.summary(print_fn=lines.append)
    text = lines[0]
    assert "d1 (Dense)" in text and "(None, 64)" in text and "704" in text
    assert "Total params: 1,025 (4.00 KB)" in text and "Non-trainable params: 128 (512.00 B)" in text


def test_freezing_is_refused_rather_than_ignored():
    model = bf.Sequential([L.Dense(1, input_shape=(2,))])
    with pytest.raises(NotImplementedError, match="trainable = False"):
        model.layers[0].trainable = False
    with pytest.raises(NotImplementedError, match="optax.multi_transform"):
        model.trainable = False
    model.layers[0].trainable = True                     # asks for what batchfit does: accepted


def test_weights_set_on_one_model_leave_another_models_training_alone():
    """A layer's set_weights reaches the models holding it before their next step (train_on_batch too);
    a model that does not hold it keeps what it trained, even before its values reached its layers."""
    x, y = np.ones((4, 1), np.float32), np.zeros((4, 1), np.float32)
    shared = L.Dense(1, kernel_initializer="ones", bias_initializer="zeros")
    a = bf.Sequential([bf.Input((1,)), shared])
    b = bf.Sequential([bf.Input((1,)), L.Dense(1, kernel_initializer="ones", bias_initializer="zeros")])
    for model in (a, b):
        model.compile(optimizer=bf.optimizers.SGD(0.25), loss="mse")
    b.train_on_batch(x, y)                     # w = 1 - 0.25 * 2 * 1 = 0.5, b = -0.5
    shared.set_weights([np.full((1, 1), 3.0, np.float32), np.zeros(1, np.float32)])
    assert float(a.train_on_batch(x, y)) == pytest.approx(9.0)        # (3 * 1)^2, the weights just set
    assert float(b.test_on_batch(x, y)) == pytest.approx(0.0)         # 0.5 - 0.5: b's own training kept


def test_dict_inputs_and_outputs_pair_each_name_with_its_own_tensor():
    """Keys given out of sorted order: each input and output is still found by its own name."""
    second, first = bf.Input((2,), name="second"), bf.Input((1,), name="first")
    total = L.Dense(1, kernel_initializer="ones", bias_initializer="zeros", name="total")
    model = bf.Model({"second": second, "first": first},
                     {"sum": total(L.Concatenate()([second, first])), "copy": L.Activation("linear")(first)})
    out = model({"second": np.array([[1.0, 2.0]], np.float32), "first": np.array([[10.0]], np.float32)})
    assert float(out["sum"][0, 0]) == 13.0 and float(out["copy"][0, 0]) == 10.0
