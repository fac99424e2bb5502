"""build: writes the seed model. The model: FEDn's mnist-pytorch MLP (784-64-32-10).

Usage: python3 model.py [OUTPUT]   (default: seed.npz)
Parameters are stored in state_dict order under keys "0".."N-1" (FEDn's numpyhelper).
"""

import os
import sys

import numpy as np
import torch

import fedcli_sdk as sdk

torch.set_num_threads(int(os.environ.get("FEDCLI_TORCH_THREADS", "1")))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 64)
        self.fc2 = torch.nn.Linear(64, 32)
        self.fc3 = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.nn.functional.dropout(x, p=0.5, training=self.training)
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def save_model(model, path):
    sdk.save_parameters([t.detach().cpu().numpy() for t in model.state_dict().values()], path)


def load_model(path):
    model = Net()
    arrays = sdk.load_parameters(path)
    keys = list(model.state_dict().keys())
    if len(arrays) != len(keys):
        raise SystemExit("%s has %d arrays, the model has %d" % (path, len(arrays), len(keys)))
    model.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays)})
    return model


def evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy


if __name__ == "__main__":
    output = sys.argv[1] if len(sys.argv) > 1 else "seed.npz"
    torch.manual_seed(0)
    save_model(Net(), output)
    print("seed model written to %s" % output)
