"""predict: class predictions of a model for the first test examples.

Usage: python3 predict.py INPUT OUTPUT   (OUTPUT: {"predictions": [...], "count": N})
"""

import sys

import data
import fedcli_sdk as sdk
from model import forward

if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: predict.py INPUT OUTPUT")
    parameters = sdk.load_parameters(sys.argv[1])
    _, _, x_test, _ = data.load()
    predictions = forward(parameters, x_test[:100]).argmax(axis=1)
    sdk.save_metrics({"predictions": predictions.tolist(), "count": len(predictions)},
                     sys.argv[2])
    print("predicted %d examples" % len(predictions))
