"""validate: loss and accuracy on this client's training share and the test set.

Usage: python3 validate.py INPUT OUTPUT   (OUTPUT: a JSON object of metrics)
"""

import sys

import data
import fedcli_sdk as sdk
from model import evaluate, load_model

if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: validate.py INPUT OUTPUT")
    model = load_model(sys.argv[1])
    x_train, y_train, x_test, y_test = data.load()
    train_loss, train_accuracy = evaluate(model, x_train, y_train)
    test_loss, test_accuracy = evaluate(model, x_test, y_test)
    sdk.save_metrics({"training_loss": train_loss, "training_accuracy": train_accuracy,
                      "test_loss": test_loss, "test_accuracy": test_accuracy}, sys.argv[2])
    print("test accuracy %.4f, test loss %.4f" % (test_accuracy, test_loss))
