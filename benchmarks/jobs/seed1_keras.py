"""The first article's job, verbatim: tf.keras fit, 10 epochs (Keras 3 on TensorFlow)."""
import tensorflow as tf
import numpy as np

# Generate dummy data
x_train = np.random.rand(1000, 10).astype(np.float32)
y_train = np.random.randint(0, 2, size=(1000, 1)).astype(np.float32)

# Define the model
model = tf.keras.models.Sequential([
    tf.keras.layers.Dense(16, activation='relu', input_shape=(10,)),
    tf.keras.layers.Dense(1, activation='sigmoid')
])

# Define the optimizer and loss
optimizer = tf.keras.optimizers.Adam(learning_rate=0.001)
loss_fn = tf.keras.losses.BinaryCrossentropy()

# Compile the model
model.compile(optimizer=optimizer, loss=loss_fn)

# Train the model using model.fit()
history = model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)

# Print the losses of the last epoch
print(f"Average training losses from model.fit(): {history.history['loss'][-1]}")
