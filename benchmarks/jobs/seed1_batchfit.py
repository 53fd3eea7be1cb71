import batchfit as bf
import numpy as np

# Generate dummy data
x_train = np.random.rand(1000, 10).astype(np.float32)
y_train = np.random.randint(0, 2, size=(1000, 1)).astype(np.float32)

# Define the model
model = bf.Sequential([
    bf.layers.Dense(16, activation='relu', input_shape=(10,)),
    bf.layers.Dense(1, activation='sigmoid')
])

# Define the optimizer and loss
optimizer = bf.optimizers.Adam(learning_rate=0.001)
loss_fn = bf.losses.BinaryCrossentropy()

# Compile the model
model.compile(optimizer=optimizer, loss=loss_fn)

# Train the model using model.fit()
history = model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)

# Print the losses of the last epoch
print(f"Average training losses from model.fit(): {history.history['loss'][-1]}")
