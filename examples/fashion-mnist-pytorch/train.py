"""train: local epochs on this client's share of Fashion-MNIST.

Usage: python3 train.py INPUT OUTPUT
Round settings (INPUT-metadata, from the combiner or `fedcli run train --settings`):

    epochs         local epochs (1)
    batch_size     (32)
    optimizer      sgd (SGD with momentum; the CNN's default) | adam (the MLP's default)
    learning_rate  (sgd: 0.02, adam: 0.002; "lr" is accepted too)
    lr_decay       the learning rate of the session's round R is
                   learning_rate * lr_decay^(R-1)  (0.8)
    momentum       for sgd (0.9)
    round          the round number, when FEDCLI_ROUND is not set (0)
    session_round  the round's number within the session (from the combiner; default: round)

The defaults are what reached the quality bar in docs/examples.md (4 clients, Dirichlet 0.5).

The shuffling (and the MLP's dropout) is seeded from FEDCLI_SEED, the round and the
client index, so a rerun gives the same update bit for bit.
"""

import runtime

import os
import sys

import data
import fedcli_sdk as sdk
from model import load_model, save_model, torch


DEFAULT_OPTIMIZER = {"cnn": "sgd", "mlp": "adam"}
DEFAULT_LEARNING_RATE = {"sgd": 0.02, "adam": 0.002}
DEFAULT_LR_DECAY = 0.8


def training_settings(settings, model_name):
    """The round SETTINGS, checked, with the defaults for MODEL_NAME filled in."""
    def get(key, default, kind):
        value = settings.get(key, default)
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise SystemExit("round setting %s=%r is not a valid %s" % (key, value, kind.__name__))

    chosen = {
        "epochs": get("epochs", 1, int),
        "batch_size": get("batch_size", 32, int),
        "optimizer": get("optimizer", DEFAULT_OPTIMIZER[model_name], str),
        "momentum": get("momentum", 0.9, float),
        "round": int(os.environ.get("FEDCLI_ROUND") or get("round", 0, int)),
    }
    if chosen["optimizer"] not in DEFAULT_LEARNING_RATE:
        raise SystemExit("round setting optimizer=%s: expected sgd or adam" % chosen["optimizer"])
    chosen["learning_rate"] = get("learning_rate", settings.get(
        "lr", DEFAULT_LEARNING_RATE[chosen["optimizer"]]), float)
    chosen["lr_decay"] = get("lr_decay", DEFAULT_LR_DECAY, float)
    if (chosen["epochs"] < 1 or chosen["batch_size"] < 1 or not chosen["learning_rate"] > 0
            or not 0 < chosen["lr_decay"] <= 1):
        raise SystemExit("round settings need epochs >= 1, batch_size >= 1, learning_rate > 0 "
                         "and 0 < lr_decay <= 1: %s" % chosen)
    # The schedule counts the session's rounds (the combiner's round ids count on across
    # sessions); `fedcli run train --round R` stands for round R of a session.
    session_round = get("session_round", chosen["round"], int)
    chosen["round_learning_rate"] = (chosen["learning_rate"]
                                     * chosen["lr_decay"] ** max(0, session_round - 1))
    return chosen


def make_optimizer(model, chosen):
    if chosen["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=chosen["round_learning_rate"])
    return torch.optim.SGD(model.parameters(), lr=chosen["round_learning_rate"],
                           momentum=chosen["momentum"])


def train_epochs(model, x, y, chosen, generator, epochs, optimizer=None):
    """EPOCHS passes over X, Y in orders drawn from GENERATOR. Returns the optimiser (a new
    one unless OPTIMIZER is given, so that a caller can carry its state on) and the mean
    loss and accuracy over the last epoch's batches, as they were trained on (free, unlike
    a second pass over the data)."""
    optimizer = optimizer or make_optimizer(model, chosen)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, len(x), chosen["batch_size"]):
            batch = order[start:start + chosen["batch_size"]]
            optimizer.zero_grad()
            logits = model(x[batch])
            loss = torch.nn.functional.cross_entropy(logits, y[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(dim=1) == y[batch]).sum().item()
    return optimizer, total_loss / max(len(x), 1), correct / max(len(x), 1)


def main(input_path, output_path):
    model, name = load_model(input_path)
    chosen = training_settings(sdk.load_settings(input_path), name)
    index = sdk.client_index()
    # One stream per (seed, round, client): distinct across clients and rounds, fixed by them.
    stream_seed = (runtime.SEED * 1_000_003 + chosen["round"] * 1_009 + index) % (2 ** 63)
    torch.manual_seed(stream_seed)  # dropout
    generator = torch.Generator().manual_seed(stream_seed)

    x_train, y_train, _, _ = data.load()
    _, loss, accuracy = train_epochs(model, x_train, y_train, chosen, generator, chosen["epochs"])
    steps = chosen["epochs"] * -(-len(x_train) // chosen["batch_size"])
    save_model(model, output_path)
    sdk.save_metadata(dict(chosen, num_examples=int(len(x_train)), model=name, steps=steps,
                           training_loss=loss, training_accuracy=accuracy), output_path)
    print("client %d round %d: %s trained on %d examples (%d steps): last epoch's loss %.4f, "
          "accuracy %.4f"
          % (index, chosen["round"], name, len(x_train), steps, loss, accuracy))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: train.py INPUT OUTPUT")
    main(sys.argv[1], sys.argv[2])
