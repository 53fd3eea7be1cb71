import batchfit as bf
import numpy as np

# Define the model (same as above)
model = bf.Sequential([
  bf.layers.Dense(128, activation='relu', input_shape=(10,)),
  bf.layers.Dense(1)
])
model.compile(optimizer='adam', loss='mse')

# Generate sample data (same as above)
X_train = np.random.rand(1000, 10)
y_train = np.random.rand(1000, 1)

# Train using model.fit
model.fit(X_train, y_train, epochs=10, batch_size=10)
