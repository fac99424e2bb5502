"""validate: loss and accuracy on this client's training share and on the test set.

Usage: python3 validate.py INPUT OUTPUT
OUTPUT: {"training_loss", "training_accuracy", "test_loss", "test_accuracy"} (FEDn's keys),
plus the example counts.
"""

import runtime  # noqa: F401

import sys

import data
import fedcli_sdk as sdk
from model import evaluate, load_model

if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: validate.py INPUT OUTPUT")
    model, name = load_model(sys.argv[1])
    x_train, y_train, x_test, y_test = data.load()
    training_loss, training_accuracy = evaluate(model, x_train, y_train)
    test_loss, test_accuracy = evaluate(model, x_test, y_test)
    sdk.save_metrics({"training_loss": training_loss, "training_accuracy": training_accuracy,
                      "test_loss": test_loss, "test_accuracy": test_accuracy,
                      "training_examples": len(x_train), "test_examples": len(x_test)},
                     sys.argv[2])
    print("%s: training accuracy %.4f, loss %.4f; test accuracy %.4f, loss %.4f"
          % (name, training_accuracy, training_loss, test_accuracy, test_loss))
