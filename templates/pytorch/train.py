"""train: local epochs of SGD on this client's Fashion-MNIST share.

Usage: python3 train.py INPUT OUTPUT
Round settings (INPUT-metadata) may set: epochs (1), batch_size (32), learning_rate (0.01).
"""

import sys

import torch

import data
import fedcli_sdk as sdk
from model import evaluate, load_model, save_model


def main(input_path, output_path):
    settings = sdk.load_settings(input_path)
    epochs = int(settings.get("epochs", 1))
    batch_size = int(settings.get("batch_size", 32))
    learning_rate = float(settings.get("learning_rate", 0.01))
    torch.manual_seed(1000 * int(settings.get("round", 0)) + sdk.client_index())

    x_train, y_train, _, _ = data.load()
    model = load_model(input_path)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train))
        for start in range(0, len(x_train), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
    save_model(model, output_path)
    loss, accuracy = evaluate(model, x_train, y_train)
    sdk.save_metadata({"num_examples": len(x_train), "epochs": epochs,
                       "batch_size": batch_size, "learning_rate": learning_rate,
                       "training_loss": loss, "training_accuracy": accuracy}, output_path)
    print("trained on %d examples: loss %.4f, accuracy %.4f" % (len(x_train), loss, accuracy))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: train.py INPUT OUTPUT")
    main(sys.argv[1], sys.argv[2])
