import batchfit as bf
import numpy as np

# Generate dummy data
x_train = np.random.rand(1000, 10).astype(np.float32)
y_train = np.random.randint(0, 2, size=(1000, 1)).astype(np.float32)

# Define the model (same as before)
model = bf.Sequential([
    bf.layers.Dense(16, activation='relu', input_shape=(10,)),
    bf.layers.Dense(1, activation='sigmoid')
])

# Define the optimizer and loss (same as before)
optimizer = bf.optimizers.Adam(learning_rate=0.001)
loss_fn = bf.losses.BinaryCrossentropy()

# Initialize loss and number of batches
losses = []
batch_size = 32
num_batches = len(x_train) // batch_size

# Train the model using model.train_on_batch()
for epoch in range(10):
    for i in range(num_batches):
        start = i * batch_size
        end = start + batch_size
        batch_x = x_train[start:end]
        batch_y = y_train[start:end]
        loss = model.train_on_batch(batch_x, batch_y)
        losses.append(loss)
    # Average losses per epoch
    avg_epoch_loss = np.mean(losses)
    print(f"Average training losses from model.train_on_batch(): {avg_epoch_loss}")
    losses = [] # Reset loss tracking for next epoch
