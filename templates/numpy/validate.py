"""validate: loss and accuracy of a model on this client's training and test data.

Usage: python3 validate.py INPUT OUTPUT   (OUTPUT: a JSON object of metrics)
"""

import sys

import data
import fedcli_sdk as sdk
from model import loss_and_accuracy

if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: validate.py INPUT OUTPUT")
    parameters = sdk.load_parameters(sys.argv[1])
    x_train, y_train, x_test, y_test = data.load()
    train_loss, train_accuracy = loss_and_accuracy(parameters, x_train, y_train)
    test_loss, test_accuracy = loss_and_accuracy(parameters, x_test, y_test)
    sdk.save_metrics({"training_loss": train_loss, "training_accuracy": train_accuracy,
                      "test_loss": test_loss, "test_accuracy": test_accuracy}, sys.argv[2])
    print("test accuracy %.4f, test loss %.4f" % (test_accuracy, test_loss))
