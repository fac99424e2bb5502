"""train: a few epochs of minibatch SGD on this client's data.

Usage: python3 train.py INPUT OUTPUT
Round settings (INPUT-metadata, written by fedcli) may set: epochs (1), batch_size (32),
learning_rate (0.05). Writes OUTPUT and OUTPUT-metadata with num_examples.
"""

import sys

import numpy as np

import data
import fedcli_sdk as sdk
from model import forward, loss_and_accuracy


def train(parameters, x, y, epochs, batch_size, learning_rate, seed):
    weights, bias = [p.astype(np.float32).copy() for p in parameters]
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start:start + batch_size]
            probabilities = forward([weights, bias], x[batch])
            probabilities[np.arange(len(batch)), y[batch]] -= 1.0  # d loss / d logits
            gradient = probabilities / len(batch)
            weights -= learning_rate * (x[batch].T @ gradient).astype(np.float32)
            bias -= learning_rate * gradient.sum(axis=0).astype(np.float32)
    return [weights, bias]


def main(input_path, output_path):
    settings = sdk.load_settings(input_path)
    epochs = int(settings.get("epochs", 1))
    batch_size = int(settings.get("batch_size", 32))
    learning_rate = float(settings.get("learning_rate", 0.05))
    round_number = int(settings.get("round", 0))

    x_train, y_train, _, _ = data.load()
    parameters = sdk.load_parameters(input_path)
    updated = train(parameters, x_train, y_train, epochs, batch_size, learning_rate,
                    seed=1000 * round_number + sdk.client_index())
    sdk.save_parameters(updated, output_path)
    loss, accuracy = loss_and_accuracy(updated, x_train, y_train)
    sdk.save_metadata({"num_examples": len(x_train), "epochs": epochs,
                       "batch_size": batch_size, "learning_rate": learning_rate,
                       "training_loss": loss, "training_accuracy": accuracy}, output_path)
    print("trained on %d examples: loss %.4f, accuracy %.4f" % (len(x_train), loss, accuracy))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: train.py INPUT OUTPUT")
    main(sys.argv[1], sys.argv[2])
