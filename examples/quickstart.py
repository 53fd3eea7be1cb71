"""The first article's example on batchfit: fit, then a train_on_batch loop, and what each number is."""

import numpy as np

import batchfit as bf

rng = np.random.default_rng(0)
x_train = rng.random((1000, 10)).astype(np.float32)
y_train = rng.integers(0, 2, size=(1000, 1)).astype(np.float32)


def build():
    model = bf.Sequential([bf.layers.Dense(16, activation="relu", input_shape=(10,)),
                           bf.layers.Dense(1, activation="sigmoid")], seed=0)
    model.compile(optimizer=bf.optimizers.Adam(learning_rate=0.001), loss=bf.losses.BinaryCrossentropy())
    return model


model = build()
history = model.fit(x_train, y_train, epochs=10, batch_size=32, shuffle=False, verbose=0)
print(f"fit, last epoch (weighted mean of 32 pre-update batch losses): {history.history['loss'][-1]:.6f}")
print(f"evaluate, the final weights:                                   {model.evaluate(x_train, y_train, verbose=0):.6f}")

model = build()                         # same initial weights (seed=0)
for epoch in range(10):
    losses = [model.train_on_batch(x_train[i:i + 32], y_train[i:i + 32]) for i in range(0, 1000, 32)]
sizes = [min(32, 1000 - i) for i in range(0, 1000, 32)]
print(f"train_on_batch, last epoch, np.mean of the raw losses:         {np.mean(losses):.6f}")
print(f"train_on_batch, last epoch, weighted by batch size:            {np.average(losses, weights=sizes):.6f}")
