import batchfit as bf
import numpy as np

# Define a simple sequential model
model = bf.Sequential([
  bf.layers.Dense(128, activation='relu', input_shape=(10,)),
  bf.layers.Dense(1)
])
model.compile(optimizer='adam', loss='mse')

# Generate sample data
X_train = np.random.rand(1000, 10)
y_train = np.random.rand(1000, 1)

# Train using train_on_batch
for i in range(1000):
  batch_index = i % 10  # Simulate batches of size 10
  X_batch = X_train[batch_index*10 : (batch_index+1)*10]
  y_batch = y_train[batch_index*10 : (batch_index+1)*10]
  loss = model.train_on_batch(X_batch, y_batch)
  print(f"Batch {i+1}, Loss: {loss}")
