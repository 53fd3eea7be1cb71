import batchfit as bf
import numpy as np

# Define the model (same as above)
model = bf.Sequential([
  bf.layers.Dense(128, activation='relu', input_shape=(10,)),
  bf.layers.Dense(1)
])
model.compile(optimizer='adam', loss='mse')

# Generate sample data (same as above)
X_train = np.random.rand(100000, 10)
y_train = np.random.rand(100000, 1)

# Create bf.data.Dataset
dataset = bf.data.Dataset.from_tensor_slices((X_train, y_train))
dataset = dataset.shuffle(buffer_size=10000).batch(32).prefetch(buffer_size=bf.data.AUTOTUNE)

# Train using model.fit with bf.data
model.fit(dataset, epochs=10)
