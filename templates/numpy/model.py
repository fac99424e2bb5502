"""build: writes the seed model, a softmax regression (weights "0", bias "1").

Usage: python3 model.py [OUTPUT]   (default: seed.npz)
"""

import sys

import numpy as np

import fedcli_sdk as sdk
from data import CLASSES, FEATURES


def softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def forward(parameters, x):
    weights, bias = parameters
    return softmax(x @ weights + bias)


def loss_and_accuracy(parameters, x, y):
    probabilities = forward(parameters, x)
    loss = -np.mean(np.log(probabilities[np.arange(len(y)), y] + 1e-12))
    accuracy = np.mean(probabilities.argmax(axis=1) == y)
    return float(loss), float(accuracy)


def seed_parameters(seed=0):
    rng = np.random.default_rng(seed)
    weights = (rng.normal(0.0, 0.01, size=(FEATURES, CLASSES))).astype(np.float32)
    bias = np.zeros(CLASSES, dtype=np.float32)
    return [weights, bias]


if __name__ == "__main__":
    output = sys.argv[1] if len(sys.argv) > 1 else "seed.npz"
    sdk.save_parameters(seed_parameters(), output)
    print("seed model written to %s" % output)
