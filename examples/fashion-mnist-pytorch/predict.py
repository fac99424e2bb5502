"""predict: class predictions for the first 100 test images.

Usage: python3 predict.py INPUT OUTPUT   (OUTPUT: {"predictions": [...], "count": N})
"""

import runtime  # noqa: F401

import sys

import data
import fedcli_sdk as sdk
from model import load_model, torch

if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: predict.py INPUT OUTPUT")
    model, _ = load_model(sys.argv[1])
    model.eval()
    _, _, x_test, _ = data.load()
    with torch.no_grad():
        predictions = model(x_test[:100]).argmax(dim=1)
    sdk.save_metrics({"predictions": predictions.tolist(), "count": len(predictions)},
                     sys.argv[2])
    print("predicted %d examples" % len(predictions))
